"""Linear attention with the ``elu(x) + 1`` feature map (Katharopoulos et al. 2020).

"Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention" replaces the
softmax kernel ``exp(q . k)`` by ``phi(q) . phi(k)`` with ``phi(x) = elu(x) + 1`` (positive), so
that ``out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / phi(q_i)^T sum_j phi(k_j)``. It does not
approximate softmax attention: it is a different (positive) kernel of the same form, included
as the cheapest baseline. Bidirectional attention costs ``O(n * d * Dv)``; causal attention uses
chunked prefix sums (:mod:`variants._prefix`), ``O(n * chunk * d + n * d * Dv)``.

The feature map has no temperature, so this variant has no ``scale`` parameter (the paper
applies ``phi`` to the raw projections). There is no accuracy knob (``knob = None``).
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from variants._prefix import (
    causal_linear_attention,
    causal_linear_backward_flops,
    causal_linear_flops,
    with_ones_column,
)
from variants.base import AttentionVariant, check_positive_int, check_qkv


def elu_feature_map(x: Tensor) -> Tensor:
    """``elu(x) + 1``: a positive feature map, elementwise."""
    return F.elu(x).add_(1.0)  # in place: elu's backward needs its input, not its output


class LinearAttention(AttentionVariant):
    """Kernelised attention with ``phi = elu + 1``; causal by chunked prefix sums.

    Args:
        chunk_size: Tokens per chunk of the causal prefix sum (default 128).
        kv_len: Ignored (accepted for a uniform constructor).
        head_dim: Ignored.
    """

    name: ClassVar[str] = "linear"
    exact: ClassVar[bool] = False
    supports_causal: ClassVar[bool] = True
    supports_cross: ClassVar[bool] = True
    knob: ClassVar[str | None] = None

    def __init__(
        self,
        chunk_size: int = 128,
        kv_len: int | None = None,
        head_dim: int | None = None,
    ) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim)
        self.chunk_size = check_positive_int(self.name, "chunk_size", chunk_size)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        check_qkv(q, k, v)
        phi_q = elu_feature_map(q)  # (B, H, Nq, D)
        phi_k = elu_feature_map(k)  # (B, H, Nk, D)
        if causal:
            # the last column of ones gives the denominator
            out = causal_linear_attention(phi_q, phi_k, with_ones_column(v), self.chunk_size)
            return out[..., :-1] / out[..., -1:]  # (B, H, Nq, Dv)
        kv = phi_k.transpose(-2, -1) @ v  # (B, H, D, Dv)
        k_sum = phi_k.sum(dim=-2).unsqueeze(-1)  # (B, H, D, 1)
        return (phi_q @ kv) / (phi_q @ k_sum)  # (B, H, Nq, Dv)

    def flops(
        self, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool
    ) -> int:
        d = head_dim
        if causal:
            per_head = causal_linear_flops(q_len, kv_len, d, d + 1, self.chunk_size)
        else:
            # phi_k^T v, phi_q @ kv, phi_q @ key sum (the key sum itself is elementwise work)
            per_head = 2 * kv_len * d * d + 2 * q_len * d * d + 2 * q_len * d
        return batch * heads * per_head

    def backward_flops(
        self, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool
    ) -> int:
        # 2x the forward: every matmul has both operands on the gradient path (q, k, v need
        # gradients, the feature map has no parameters), except the causal prefix sum's
        # constant ones matrix (1x)
        if causal:
            d = head_dim
            per_head = causal_linear_backward_flops(q_len, kv_len, d, d + 1, self.chunk_size)
            return batch * heads * per_head
        return 2 * self.flops(batch, heads, q_len, kv_len, head_dim, causal)

    def analytic_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4
    ) -> int:
        d = head_dim
        per_head = (q_len + kv_len) * d + q_len * d  # features and output
        if causal:
            c = min(self.chunk_size, q_len)
            per_head += kv_len * (d + 1) + q_len * c + (q_len // c + 1) * d * (d + 1)
        return batch * heads * per_head * element_size
