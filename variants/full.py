"""Textbook softmax attention: ``softmax(Q K^T / sqrt(d)) V`` with the n x n matrix in memory.

The plain reference path (Vaswani et al. 2017, "Attention Is All You Need"). It materialises the
full ``(B, H, Nq, Nk)`` score matrix, so its time and memory grow as O(Nq * Nk); it is the
baseline the efficient variants are compared with and the eager path that defines correctness.
Causal attention uses the bottom-right aligned mask of :func:`variants.base.causal_mask`. Grouped
heads are native (a group's queries are rows of its KV head's score matrix); decoding reads a
preallocated KV cache (:mod:`variants.engines.kv_cache`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from variants.base import AttentionVariant, causal_mask, exact_attention_flops
from variants.engines.kv_cache import ExactCacheDecode
from variants.grouped import group_size, grouped_queries, ungroup


class FullAttention(ExactCacheDecode, AttentionVariant):
    """Exact softmax attention with an explicit score matrix.

    Args:
        kv_len: Ignored (accepted for a uniform constructor).
        head_dim: Ignored.
        scale: Softmax scale; default ``1/sqrt(head_dim)``.
    """

    name: ClassVar[str] = "full"
    exact: ClassVar[bool] = True
    supports_causal: ClassVar[bool] = True
    supports_cross: ClassVar[bool] = True
    gqa: ClassVar[str] = "native"

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        group = group_size(q, k)
        mask = causal_mask(q.shape[-2], k.shape[-2], device=q.device) if causal else None
        if mask is not None and group > 1:
            mask = mask.repeat(group, 1)  # (G * Nq, Nk): the rows of grouped queries
        out = self.cached_attention(grouped_queries(q, k.shape[1]), k, v, mask)
        return ungroup(out, q.shape[1])  # (B, H, Nq, Dv)

    def cached_attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """``q (B, Hkv, G Nq, D)`` over ``k``, ``v (B, Hkv, Nk, *)``, ``mask (G Nq, Nk)``."""
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.softmax_scale(q.shape[-1])
        # scores: (B, Hkv, G * Nq, Nk)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)  # (B, Hkv, G * Nq, Nk)
        return torch.matmul(probs, v)  # (B, Hkv, G * Nq, Dv)

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
        # QK^T and PV over the whole score matrix: the causal mask is applied, nothing skipped.
        # The backward (base default, 2x) is autograd's four matmuls: dP, dV, dQ, dK.
        return exact_attention_flops(batch, heads, q_len, kv_len, head_dim, skip_masked=False)

    def analytic_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4, kv_heads=None
    ) -> int:
        # scores and probabilities (and the mask copy when causal), plus the output
        n_mats = 3 if causal else 2
        return batch * heads * (n_mats * q_len * kv_len + q_len * head_dim) * element_size
