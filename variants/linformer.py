"""Linformer attention (Wang et al. 2020): keys and values projected along the sequence.

"Linformer: Self-Attention with Linear Complexity" observes that the attention matrix is close to
low rank and replaces ``softmax(Q K^T * scale) V`` by ``softmax(Q (E K)^T * scale) (F V)`` with
``E, F`` of shape ``(k, kv_len)``: the ``n x n`` matrix becomes ``n x k``, so time and memory
are ``O(n * k * d)`` and ``O(n * k)``. It approximates softmax attention (exactly when
``k = kv_len`` and ``E = F = I``).

Projections (``init``): ``gaussian`` draws ``E, F`` once from ``seed`` with entries
``N(0, 1/k)`` (the Johnson-Lindenstrauss scaling of the paper's analysis; fixed buffers);
``learned`` draws the same initial values but as trainable ``nn.Parameter``s (the paper trains
them; a fitting step such as attention transfer sets ``trained``); ``mean_pool`` makes each
projected key and value the mean of a contiguous segment of the keys (boundaries at
``floor(i n / k)``, as Nystromformer's landmarks), ``E = F``, no training: the effective
attention matrix ``softmax(Q (E K)^T) E`` is then non-negative with rows summing to one, a
weighted average of the values like softmax attention, which random projections are not (their
effective rows sum to anything). It is the fair untrained Linformer. ``identity`` uses
``E = F = I`` and is allowed only with ``k == kv_len``: the exact limit, used by the tests.
``share_kv=True`` uses one matrix for both (``F = E``).

Lengths: the projections are built for ``kv_len`` keys. Fewer keys ``n`` use the first ``n``
columns of the projections, as the paper's implementation does (for ``identity`` the result is
then no longer exact); ``mean_pool`` instead averages the ``n`` keys into ``min(k, n)`` segments,
so its rows stay means. More keys are unsupported, with that reason. Only the key length is
projected, so the query length is free (cross-attention). Causal attention is not defined for
Linformer (projecting along the sequence mixes future keys into every projected key):
unsupported, and so is decoding. Grouped heads are native: keys and values are projected once
per KV head, and the attention over them shares them (``enable_gqa``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from variants.base import (
    AttentionVariant,
    VariantConfigError,
    check_choice,
    check_int,
    check_positive_int,
    check_qkv,
    recomputing_backward_flops,
)
from variants.nystrom import segment_mean_matrix

INITS = ("gaussian", "learned", "mean_pool", "identity")
DEFAULT_K = 256


def project_sequence(proj: Tensor, x: Tensor) -> Tensor:
    """``proj (k, n) @ x (B, H, n, D)`` along the sequence -> ``(B, H, k, D)``.

    A batched GEMM sharing ``proj`` across (batch, head): one GEMM over an ``(n, B*H*D)``
    view needed a permuted copy of ``x`` first, which cost more than the GEMM's shape gains
    (n=8192, 8 heads, d 64, k 256 on 2 CPU cores: 60 ms against 40 ms).
    """
    return torch.matmul(proj, x)  # (B, H, k, D)


class LinformerAttention(AttentionVariant):
    """Softmax attention over keys and values projected to ``k`` along the sequence.

    Args:
        k: Projected length (1 <= k <= kv_len). ``None`` (the default) means
            ``min(256, kv_len)``; an explicit value above kv_len is an error.
        share_kv: Use one projection for keys and values. Default False.
        init: "gaussian" (N(0, 1/k), fixed), "learned" (trainable, same init), "mean_pool"
            (segment means, fixed; rows of the effective matrix sum to one) or "identity"
            (needs k == kv_len; the exact limit).
        seed: Seed of the random projections.
        kv_len: Longest key length (required: the projections are k x kv_len).
        head_dim: Ignored.
        scale: Softmax scale; default ``1/sqrt(head_dim)``.
    """

    name: ClassVar[str] = "linformer"
    exact: ClassVar[bool] = False
    supports_causal: ClassVar[bool] = False
    supports_cross: ClassVar[bool] = True
    randomized: ClassVar[bool] = True
    knob: ClassVar[str | None] = "k"
    gqa: ClassVar[str] = "native"
    no_decode_reason: ClassVar[str] = (
        "no decode form: E and F project along the whole sequence, so every projected key "
        "mixes all the tokens (including future ones) and a new token changes every one"
    )

    def __init__(
        self,
        k: int | None = None,
        share_kv: bool = False,
        init: str = "gaussian",
        seed: int = 0,
        kv_len: int | None = None,
        head_dim: int | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim, scale=scale)
        if kv_len is None:
            raise VariantConfigError("linformer: kv_len is required (projections are k x kv_len)")
        if k is None:
            k = min(DEFAULT_K, kv_len)
        check_positive_int(self.name, "k", k)
        if k > kv_len:
            raise VariantConfigError(
                f"linformer: k={k} exceeds kv_len={kv_len} (allowed: 1..{kv_len})"
            )
        if not isinstance(share_kv, bool):
            raise VariantConfigError(f"linformer: share_kv={share_kv!r} must be true or false")
        self.init = check_choice(self.name, "init", init, INITS)
        if init == "identity" and k != kv_len:
            raise VariantConfigError(
                f"linformer: init='identity' needs k == kv_len, got k={k}, kv_len={kv_len}"
            )
        self.k, self.share_kv = k, share_kv
        self.seed = check_int(self.name, "seed", seed)

        gen = torch.Generator().manual_seed(seed)
        n_proj = 1 if share_kv else 2
        if init == "identity":
            mats = [torch.eye(kv_len) for _ in range(n_proj)]
        elif init == "mean_pool":  # kept to inspect; calls rebuild it for their length, dtype
            mats = [segment_mean_matrix(kv_len, k, torch.float32, None) for _ in range(n_proj)]
        else:
            mats = [torch.randn(k, kv_len, generator=gen) * k**-0.5 for _ in range(n_proj)]
        for name, mat in zip(("proj_k", "proj_v"), mats):
            if init == "learned":
                setattr(self, name, torch.nn.Parameter(mat))
            else:
                self.register_buffer(name, mat)

    def _too_long(self, nk: int) -> str:
        return f"kv_len={nk} exceeds the kv_len={self.kv_len} the projections were built for"

    def _projections(self, nk: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The ``(k', nk)`` projections used for ``nk`` keys (module docstring, "Lengths")."""
        if self.init == "mean_pool":  # built in the inputs' dtype: rows sum to one exactly
            mean = segment_mean_matrix(nk, min(self.k, nk), dtype, self.proj_k.device)
            return mean, mean
        # shorter sequences: the first nk columns, as in the paper's implementation
        proj_k = self.proj_k[:, :nk]
        return proj_k, (proj_k if self.share_kv else self.proj_v[:, :nk])

    def not_supported_reasons(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, causal)
        if k.shape[-2] > self.kv_len:
            reasons.append(f"linformer: {self._too_long(k.shape[-2])}")
        return reasons

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        check_qkv(q, k, v)
        if causal:
            raise ValueError("linformer: causal attention is not supported by this variant")
        nk = k.shape[-2]
        if nk > self.kv_len:
            raise ValueError(f"linformer: {self._too_long(nk)}")
        proj_k, proj_v = self._projections(nk, k.dtype)
        k_proj = project_sequence(proj_k.to(k.dtype), k)  # (B, Hkv, k, D)
        v_proj = project_sequence(proj_v.to(v.dtype), v)  # (B, Hkv, k, Dv)
        return F.scaled_dot_product_attention(
            q,
            k_proj,
            v_proj,
            scale=self.softmax_scale(q.shape[-1]),
            enable_gqa=k.shape[1] != q.shape[1],
        )  # (B, H, Nq, Dv)

    def _costs(self, q_len: int, kv_len: int, head_dim: int) -> tuple[int, int]:
        """Per-head forward FLOPs of (the two projections, the fused attention over k keys)."""
        kp = min(self.k, kv_len) if self.init == "mean_pool" else self.k
        return 2 * 2 * kp * kv_len * head_dim, 4 * q_len * kp * head_dim

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
        projections, attention = self._costs(q_len, kv_len, head_dim)
        keys = heads if kv_heads is None else kv_heads  # projected once per KV head
        return batch * (keys * projections + heads * attention)

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
        # Projections: only d(K) and d(V) unless E, F are trainable (then dE, dF too: 2x);
        # attention: fused SDPA, whose backward recomputes the scores (2.5x).
        projections, attention = self._costs(q_len, kv_len, head_dim)
        factor = 2 if self.init == "learned" else 1
        keys = heads if kv_heads is None else kv_heads
        return batch * (
            keys * factor * projections + heads * recomputing_backward_flops(attention)
        )

    def analytic_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4, kv_heads=None
    ) -> int:
        d, kp = head_dim, self.k
        # projected K and V and the output; the fused SDPA kernel keeps no (q_len, k) scores
        # (measured on the CPU: 18.7 MB at n=8192, 8 heads, d 64, k 256; this model: 18.9 MB)
        keys = heads if kv_heads is None else kv_heads
        elements = keys * 2 * kp * d + heads * (q_len * d + q_len)
        return batch * elements * element_size
