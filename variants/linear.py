"""Linear attention with the ``elu(x) + 1`` feature map (Katharopoulos et al. 2020).

"Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention" replaces the
softmax kernel ``exp(q . k)`` by ``phi(q) . phi(k)`` with ``phi(x) = elu(x) + 1`` (positive), so
that ``out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / phi(q_i)^T sum_j phi(k_j)``. It does not
approximate softmax attention: it is a different (positive) kernel of the same form, included
as the cheapest baseline. Bidirectional attention costs ``O(n * d * Dv)``; causal attention uses
streamed chunked prefix sums (:mod:`variants.engines.prefix`), ``O(n * chunk * d + n * d * Dv)``;
decoding carries the ``(d, Dv + 1)`` running sum (:mod:`variants.engines.prefix_decode`).
Grouped heads are native: one key summary (and decode state) per KV head; the causal forward
repeats k and v to the query heads for the prefix sums.

The feature map has no temperature, so this variant has no ``scale`` parameter (the paper
applies ``phi`` to the raw projections). There is no accuracy knob (``knob = None``).
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from variants.base import AttentionVariant, check_qkv
from variants.engines.prefix import FeatureMaps
from variants.engines.prefix_costs import StreamedKernelAttention
from variants.engines.prefix_decode import RecurrentDecode
from variants.grouped import group_size, grouped_queries, repeat_bytes, repeat_kv, ungroup
from variants.tuning import check_auto


def elu_feature_map(x: Tensor) -> Tensor:
    """``elu(x) + 1``: a positive feature map, elementwise."""
    return F.elu(x).add_(1.0)  # in place: elu's backward needs its input, not its output


#: The causal prefix sums apply the map group by group (:mod:`variants.engines.prefix`).
ELU_MAPS = FeatureMaps(query=elu_feature_map, key=elu_feature_map)


class LinearAttention(RecurrentDecode, StreamedKernelAttention, AttentionVariant):
    """Kernelised attention with ``phi = elu + 1``; causal by chunked prefix sums.

    Args:
        chunk_size: Tokens per chunk of the causal prefix sum; None (default) chooses it by
            measurement on this machine (:mod:`variants.tuning`; 64 with tuning off).
        group_elements: Query elements per streamed group of chunks; None: tuned likewise.
        kv_len: Ignored (accepted for a uniform constructor).
        head_dim: Ignored.
    """

    name: ClassVar[str] = "linear"
    exact: ClassVar[bool] = False
    supports_causal: ClassVar[bool] = True
    supports_cross: ClassVar[bool] = True
    knob: ClassVar[str | None] = None
    gqa: ClassVar[str] = "native"

    def __init__(
        self,
        chunk_size: int | None = None,
        kv_len: int | None = None,
        head_dim: int | None = None,
        group_elements: int | None = None,
    ) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim)
        self.chunk_size = check_auto(self.name, "chunk_size", chunk_size)
        self.group_elements = check_auto(self.name, "group_elements", group_elements)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        check_qkv(q, k, v)
        if causal:  # the features are made group by group inside the prefix sums
            group = group_size(q, k)
            k, v = repeat_kv(k, group), repeat_kv(v, group)  # (B, H, Nk, *)
            return self.causal_prefix(q, k, v, ELU_MAPS)  # (B, H, Nq, Dv)
        phi_q = grouped_queries(elu_feature_map(q), k.shape[1])  # (B, Hkv, G * Nq, D)
        phi_k = elu_feature_map(k)  # (B, Hkv, Nk, D)
        kv = phi_k.transpose(-2, -1) @ v  # (B, Hkv, D, Dv)
        k_sum = phi_k.sum(dim=-2).unsqueeze(-1)  # (B, Hkv, D, 1)
        return ungroup((phi_q @ kv) / (phi_q @ k_sum), q.shape[1])  # (B, H, Nq, Dv)

    def decode_maps(self, q: Tensor) -> tuple[FeatureMaps, tuple[Tensor, ...]]:
        return ELU_MAPS, ()

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
        d = head_dim
        if causal:  # k and v repeated to the query heads
            return batch * heads * self.attention_flops(q_len, kv_len, d, causal)
        # per KV head phi_k^T v; per query head phi_q @ kv and phi_q @ key sum (the key sum
        # itself is elementwise work)
        keys = (heads if kv_heads is None else kv_heads) * 2 * kv_len * d * d
        return batch * (keys + heads * (2 * q_len * d * d + 2 * q_len * d))

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
        # 2x the forward: every matmul has both operands on the gradient path (q, k, v need
        # gradients, the feature map has no parameters); the causal backward also computes the
        # chunks' scores again (it stores no (n, chunk) tensor)
        if causal:
            return batch * heads * self.attention_flops(q_len, kv_len, head_dim, causal, True)
        return 2 * self.flops(batch, heads, q_len, kv_len, head_dim, causal, kv_heads)

    def feature_count(self, head_dim: int) -> int:
        return head_dim

    def analytic_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4, kv_heads=None
    ) -> int:
        d = head_dim
        if causal:  # plus k and v repeated to the query heads
            repeated = repeat_bytes(batch, heads, kv_heads, kv_len, d, element_size)
            return self.causal_memory(batch, heads, q_len, head_dim, element_size) + repeated
        keys = heads if kv_heads is None else kv_heads
        elements = heads * 2 * q_len * d + keys * kv_len * d  # features and output
        return batch * elements * element_size
