"""Linear attention with the ``elu(x) + 1`` feature map (Katharopoulos et al. 2020).

"Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention" replaces the
softmax kernel ``exp(q . k)`` by ``phi(q) . phi(k)`` with ``phi(x) = elu(x) + 1`` (positive), so
that ``out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / phi(q_i)^T sum_j phi(k_j)``. It does not
approximate softmax attention: it is a different (positive) kernel of the same form, included
as the cheapest baseline. Bidirectional attention costs ``O(n * d * Dv)``; causal attention uses
streamed chunked prefix sums (:mod:`variants.engines.prefix`), ``O(n * chunk * d + n * d * Dv)``.

The feature map has no temperature, so this variant has no ``scale`` parameter (the paper
applies ``phi`` to the raw projections). There is no accuracy knob (``knob = None``).
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from variants.base import AttentionVariant, check_positive_int, check_qkv
from variants.engines.prefix import FeatureMaps, causal_linear_attention
from variants.engines.prefix_costs import StreamedKernelAttention


def elu_feature_map(x: Tensor) -> Tensor:
    """``elu(x) + 1``: a positive feature map, elementwise."""
    return F.elu(x).add_(1.0)  # in place: elu's backward needs its input, not its output


#: The causal prefix sums apply the map group by group (:mod:`variants.engines.prefix`).
ELU_MAPS = FeatureMaps(query=elu_feature_map, key=elu_feature_map)


class LinearAttention(StreamedKernelAttention, AttentionVariant):
    """Kernelised attention with ``phi = elu + 1``; causal by chunked prefix sums.

    Args:
        chunk_size: Tokens per chunk of the causal prefix sum (default 64).
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
        chunk_size: int = 64,
        kv_len: int | None = None,
        head_dim: int | None = None,
    ) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim)
        self.chunk_size = check_positive_int(self.name, "chunk_size", chunk_size)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        check_qkv(q, k, v)
        if causal:  # the features are made group by group inside the prefix sums
            return causal_linear_attention(q, k, v, ELU_MAPS, self.chunk_size)  # (B, H, Nq, Dv)
        phi_q = elu_feature_map(q)  # (B, H, Nq, D)
        phi_k = elu_feature_map(k)  # (B, H, Nk, D)
        kv = phi_k.transpose(-2, -1) @ v  # (B, H, D, Dv)
        k_sum = phi_k.sum(dim=-2).unsqueeze(-1)  # (B, H, D, 1)
        return (phi_q @ kv) / (phi_q @ k_sum)  # (B, H, Nq, Dv)

    def flops(
        self, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool
    ) -> int:
        d = head_dim
        if causal:
            per_head = self.attention_flops(q_len, kv_len, d, causal)
        else:
            # phi_k^T v, phi_q @ kv, phi_q @ key sum (the key sum itself is elementwise work)
            per_head = 2 * kv_len * d * d + 2 * q_len * d * d + 2 * q_len * d
        return batch * heads * per_head

    def backward_flops(
        self, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool
    ) -> int:
        # 2x the forward: every matmul has both operands on the gradient path (q, k, v need
        # gradients, the feature map has no parameters); the causal backward also computes the
        # chunks' scores again (it stores no (n, chunk) tensor)
        if causal:
            return batch * heads * self.attention_flops(q_len, kv_len, head_dim, causal, True)
        return 2 * self.flops(batch, heads, q_len, kv_len, head_dim, causal)

    def feature_count(self, head_dim: int) -> int:
        return head_dim

    def analytic_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4
    ) -> int:
        d = head_dim
        if causal:
            return self.causal_memory(batch, heads, q_len, head_dim, element_size)
        per_head = (q_len + kv_len) * d + q_len * d  # features and output
        return batch * heads * per_head * element_size
