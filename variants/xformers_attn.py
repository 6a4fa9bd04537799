"""xformers ``memory_efficient_attention`` (Rabe & Staats 2021; Lefaudeux et al., xformers).

Exact softmax attention computed blockwise without the n x n matrix, through
``xformers.ops.memory_efficient_attention``. xformers takes ``(B, N, H, D)`` tensors, so the
layout is converted on the way in and out. Its kernels are CUDA-only: on a CPU, or where the
package is not installed, the variant reports itself unsupported with the reason. xformers is an
optional dependency (``pip install attnbench[xformers]``) imported only inside this module's
functions.

Causal with ``q_len != kv_len`` uses ``LowerTriangularFromBottomRightMask``, matching the
suite's bottom-right convention.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from variants.base import AttentionVariant, exact_attention_flops
from variants.grouped import repeat_bytes


def xformers_import_error() -> str | None:
    """Why xformers.ops cannot be imported here, or None when it can."""
    try:
        import xformers.ops  # noqa: F401
    except Exception as exc:  # any failure means "unusable", with its reason
        return f"xformers is not importable ({type(exc).__name__}: {exc}); pip install xformers"
    return None


def memory_efficient_attention(q: Tensor, k: Tensor, v: Tensor, bias, scale: float) -> Tensor:
    """``xformers.ops.memory_efficient_attention`` on the suite's ``(B, H, N, D)`` layout.

    Args:
        q, k, v: ``(B, H, Nq, D)``, ``(B, H, Nk, D)``, ``(B, H, Nk, Dv)``.
        bias: An ``xformers.ops.fmha.attn_bias`` mask, or None.
        scale: Softmax scale.

    Returns:
        ``(B, H, Nq, Dv)``.
    """
    import xformers.ops as xops

    out = xops.memory_efficient_attention(
        q.transpose(1, 2),  # (B, Nq, H, D): xformers' layout
        k.transpose(1, 2),  # (B, Nk, H, D)
        v.transpose(1, 2),  # (B, Nk, H, Dv)
        attn_bias=bias,
        scale=scale,
    )
    return out.transpose(1, 2)  # (B, H, Nq, Dv)


def xformers_dispatch_error(
    q: Tensor, k: Tensor, v: Tensor, scale: float, attn_bias: Any = None
) -> str | None:
    """Why xformers' dispatcher has no forward operator for these inputs (None when one fits).

    Asked before any work, so that a build whose CUDA extension does not load (seen on an H100:
    a wheel built for another torch and CUDA) gives ``unsupported`` rows, not errors.
    """
    try:
        from xformers.ops import fmha

        inp = fmha.Inputs(
            query=q[:1].transpose(1, 2),
            key=k[:1].transpose(1, 2),
            value=v[:1].transpose(1, 2),
            attn_bias=attn_bias,
            scale=scale,
        )
        fmha.dispatch._dispatch_fw(inp, False)
    except Exception as exc:  # xformers raises NotImplementedError with its reasons
        return f"xformers: no operator for these inputs: {str(exc).strip()[:400]}"
    return None


class XFormersAttention(AttentionVariant):
    """Exact attention through ``xformers.ops.memory_efficient_attention`` (CUDA only).

    Args:
        kv_len: Ignored.
        head_dim: Ignored.
        scale: Softmax scale; default ``1/sqrt(head_dim)``.
    """

    name: ClassVar[str] = "xformers"
    exact: ClassVar[bool] = True
    recomputes_scores: ClassVar[bool] = True  # fused kernel: backward 2.5x the forward
    supported_devices: ClassVar[tuple[str, ...]] = ("cuda",)
    supported_dtypes: ClassVar[tuple[torch.dtype, ...]] = (
        torch.float16,
        torch.bfloat16,
        torch.float32,
    )

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        from xformers.ops import fmha

        bias = None
        if causal:
            bias = (
                fmha.attn_bias.LowerTriangularMask()
                if q.shape[-2] == k.shape[-2]
                else fmha.attn_bias.LowerTriangularFromBottomRightMask()
            )
        return memory_efficient_attention(q, k, v, bias, self.softmax_scale(q.shape[-1]))

    def not_supported_reasons(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, causal)
        err = xformers_import_error()
        if err:
            reasons.append(f"xformers: {err}")
        if reasons:
            return reasons
        # Let xformers' own dispatcher say why no operator fits (head dim, alignment, ...).
        error = xformers_dispatch_error(q, k, v, self.softmax_scale(q.shape[-1]))
        if error:
            reasons.append(error)
        return reasons

    def flops(
        self,
        batch: int,
        heads: int,
        q_len: int,
        kv_len: int,
        head_dim: int,
        causal: bool,
        kv_heads: int | None = None,
    ) -> int:
        # The causal masks (LowerTriangular, ...FromBottomRight) skip the masked tiles.
        return exact_attention_flops(batch, heads, q_len, kv_len, head_dim, skip_masked=causal)

    def analytic_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4, kv_heads=None
    ) -> int:
        repeated = repeat_bytes(batch, heads, kv_heads, kv_len, head_dim, element_size)
        return batch * heads * q_len * (head_dim * element_size + 4) + repeated
