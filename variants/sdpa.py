"""PyTorch ``scaled_dot_product_attention`` with its backend pinned.

Exact softmax attention through ``torch.nn.functional.scaled_dot_product_attention``. The
``backend`` parameter pins one kernel through ``torch.nn.attention.sdpa_kernel``: ``math``
(eager reference), ``flash`` (FlashAttention-2, CUDA fp16/bf16), ``efficient`` (memory-efficient
attention), ``cudnn`` (cuDNN fused attention), or ``auto`` (let PyTorch choose). A pinned
backend that the device or inputs cannot use is reported by ``not_supported_reasons``, never
replaced by another kernel: a benchmark row that says ``flash`` ran flash.

Causal attention with ``q_len != kv_len`` uses an explicit bottom-right boolean mask, because
SDPA's ``is_causal=True`` aligns to the top left; with equal lengths ``is_causal=True`` is used.
Grouped heads are native (``enable_gqa``); decoding reads a preallocated KV cache
(:mod:`variants.engines.kv_cache`) with a group's queries as rows of its KV head.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from variants.base import (
    AttentionVariant,
    causal_mask,
    check_choice,
    exact_attention_flops,
    recomputing_backward_flops,
)
from variants.engines.kv_cache import ExactCacheDecode
from variants.grouped import group_size

BACKENDS = ("auto", "math", "flash", "efficient", "cudnn")


def _sdp_backend(backend: str):
    from torch.nn.attention import SDPBackend

    return {
        "math": SDPBackend.MATH,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }[backend]


def _pinned(backend: str):
    """A context that pins ``backend`` (none for ``auto``)."""
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel([_sdp_backend(backend)])


class SDPAAttention(ExactCacheDecode, AttentionVariant):
    """Exact attention through ``F.scaled_dot_product_attention``.

    Args:
        backend: One of auto, math, flash, efficient, cudnn. Default ``auto``.
        kv_len: Ignored.
        head_dim: Ignored.
        scale: Softmax scale; default ``1/sqrt(head_dim)``.
    """

    name: ClassVar[str] = "sdpa"
    exact: ClassVar[bool] = True
    gqa: ClassVar[str] = "native"

    def __init__(
        self,
        backend: str = "auto",
        kv_len: int | None = None,
        head_dim: int | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim, scale=scale)
        self.backend = check_choice(self.name, "backend", backend, BACKENDS)

    def _call(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        mask = None
        is_causal = False
        if causal:
            if q.shape[-2] == k.shape[-2]:
                is_causal = True
            else:
                mask = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
        return self._sdpa(q, k, v, mask, is_causal)

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, mask, is_causal: bool = False) -> Tensor:
        """SDPA with the configured scale, grouped heads through ``enable_gqa``."""
        scale, gqa = self.softmax_scale(q.shape[-1]), k.shape[1] != q.shape[1]
        with _pinned(self.backend):
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=gqa
            )

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        group_size(q, k)  # a kv_heads that does not divide heads: ValueError naming it
        return self._call(q, k, v, causal)  # (B, H, Nq, Dv)

    def cached_attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """``q (B, Hkv, G T, D)`` over the cache ``k``, ``v (B, Hkv, L, *)``, ``mask (G T, L)``:
        one pass over each KV head's cache for its whole group."""
        return self._sdpa(q, k, v, mask)  # (B, Hkv, G * T, Dv)

    def not_supported_reasons(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, causal)
        if reasons or self.backend in ("auto", "math"):
            return reasons
        if q.device.type != "cuda":
            return [f"sdpa: backend {self.backend} needs a CUDA device (got {q.device.type})"]
        # Ask PyTorch itself: run on a tiny slice with the backend pinned; a kernel that cannot
        # run raises "No available kernel" and warns why. Cheap next to any real point.
        group = q.shape[1] // k.shape[1]  # keep grouped heads grouped in the probe
        probe = (q[:1, :group], k[:1, :1], v[:1, :1])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self.forward(*probe, causal=causal)
            except RuntimeError as exc:
                why = "; ".join(str(w.message).splitlines()[0] for w in caught) or str(exc)
                return [f"sdpa: backend {self.backend} cannot run these inputs: {why}"]
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
        # The work the kernel does. With equal lengths, causal runs with is_causal=True and the
        # fused kernels skip the tiles above the diagonal (about half the work: counted as the
        # visible pairs); `math` masks a full score matrix, and an explicit bottom-right mask
        # (q_len != kv_len) is applied to every tile, so those do all the work.
        skips = causal and q_len == kv_len and self.backend != "math"
        return exact_attention_flops(batch, heads, q_len, kv_len, head_dim, skip_masked=skips)

    def backward_flops(
        self,
        batch: int,
        heads: int,
        q_len: int,
        kv_len: int,
        head_dim: int,
        causal: bool,
        kv_heads: int | None = None,
    ) -> int:
        # `math` is autograd through two matmuls (2x); the fused kernels (and `auto`, which
        # picks one on the CPU and, for fp16/bf16/fp32, on CUDA) recompute the scores (2.5x).
        fwd = self.flops(batch, heads, q_len, kv_len, head_dim, causal)
        return 2 * fwd if self.backend == "math" else recomputing_backward_flops(fwd)

    def analytic_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4, kv_heads=None
    ) -> int:
        out = batch * heads * q_len * head_dim * element_size
        if self.backend == "math":  # materialises the scores and the probabilities
            return out + 2 * batch * heads * q_len * kv_len * element_size
        # flash/efficient/cudnn, and auto: PyTorch dispatches to a fused kernel on the CPU
        # (flash, fp32/fp64/bf16/fp16) and on CUDA, which keeps one log-sum-exp per row. Measured
        # here (CPU, 8 heads, head_dim 64): 18 MB at n=8192 against 4.3 GB for `full`. A
        # configuration that falls back to math under auto exceeds this model.
        return out + batch * heads * q_len * 4
