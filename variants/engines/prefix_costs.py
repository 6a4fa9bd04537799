"""Cost models of the kernel attention of :mod:`variants.engines.prefix`: matmul FLOPs and memory.

FLOPs count matmuls only, a multiply-add as 2 (softmax, exp, masks, sums are elementwise work),
and follow the kernels exactly (``tests/test_flops.py`` checks them against
``FlopCounterMode``). The feature maps' own costs are the variants'.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor

from variants.engines.prefix import FeatureMaps, causal_linear_attention
from variants.engines.prefix_stream import chunk_groups, group_elements, is_batched
from variants.tuning import Knob, TunedEngine

#: Candidate chunk sizes of the causal prefix sums (tokens).
CHUNKS = (32, 64, 128)
#: Candidate query elements per group: streamed (the CPU's loop) and batched (GPUs).
GROUPS = (1 << 16, 1 << 17, 1 << 18)
DEVICE_GROUPS = (1 << 22, 1 << 23, 1 << 24)


def causal_linear_flops(q_len: int, kv_len: int, features: int, v_dim: int, chunk: int) -> int:
    """Forward matmul FLOPs of the causal prefix sums for one (batch, head), the feature maps
    excluded (their callers count them): the initial state of the keys every query sees, each
    chunk's state read and update, and the chunks' scores and masked product."""
    m, e = features, v_dim + 1
    return 2 * (kv_len - q_len) * m * e + 4 * q_len * m * e + _chunk_pairs(q_len, chunk) * (m + e)


def causal_linear_backward_flops(
    q_len: int, kv_len: int, features: int, v_dim: int, chunk: int
) -> int:
    """Backward matmul FLOPs of the causal prefix sums for one (batch, head), the feature maps'
    recomputation and gradients excluded: both gradients of every forward matmul (2x) and the
    chunks' scores computed again."""
    m, e = features, v_dim + 1
    pairs = _chunk_pairs(q_len, chunk)
    return 4 * (kv_len - q_len) * m * e + 8 * q_len * m * e + pairs * (3 * m + 2 * e)


class StreamedKernelAttention(TunedEngine, abc.ABC):
    """Mixin of the kernel-attention variants whose causal path is the streamed prefix sums
    (:func:`variants.engines.prefix.causal_linear_attention`): the tuned chunk and group
    (:meth:`causal_prefix`) and the cost models of the attention over the features (the
    feature maps' own are the variant's), in the values of the last call. Needs
    ``chunk_size``, ``group_elements`` (None: tuned) and :meth:`feature_count`.
    """

    chunk_size: int | None
    group_elements: int | None
    #: The chunk used when tuning is off (docs/performance.md).
    default_chunk: ClassVar[int] = 64

    def prefix_knobs(self, batched: bool = False) -> tuple[Knob, Knob]:
        """The chunk and the group size (streamed, or ``batched`` on GPUs)."""
        groups = DEVICE_GROUPS if batched else GROUPS
        return (
            Knob("chunk_size", self.default_chunk, CHUNKS),
            Knob("group_elements", group_elements(batched), groups),
        )

    def causal_prefix(
        self, q: Tensor, k: Tensor, v: Tensor, maps: FeatureMaps, params: Sequence[Tensor] = ()
    ) -> Tensor:
        """:func:`~variants.engines.prefix.causal_linear_attention` with the chunk and group of
        this call's shape class (the user's, tuned, or the defaults)."""

        def run(values: dict, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            chunk, group = values["chunk_size"], values["group_elements"]
            return causal_linear_attention(q, k, v, maps, chunk, params, group)

        extra = {"features": self.feature_count(q.shape[-1]), "key_is_log": maps.key_is_log}
        knobs = self.prefix_knobs(is_batched(q))
        return run(self.engine_values(knobs, q, k, v, True, run, extra), q, k, v)

    def engine_tunable(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> bool:
        return causal

    def _chunk(self) -> int:
        return self.engine_value(self.prefix_knobs()[0])

    def _group(self) -> int:
        return self.engine_value(self.prefix_knobs()[1])

    @abc.abstractmethod
    def feature_count(self, head_dim: int) -> int:
        """The number of features ``m`` per query and key."""

    def attention_flops(self, q_len, kv_len, head_dim, causal, backward=False) -> int:
        """Matmul FLOPs of the attention over the features for one (batch, head): the causal
        prefix sums, or the keys' ``(m, Dv + 1)`` summary and its read-out by the queries
        (backward: both gradients of each, 2x)."""
        m, c = self.feature_count(head_dim), self._chunk()
        if causal:
            count = causal_linear_backward_flops if backward else causal_linear_flops
            return count(q_len, kv_len, m, head_dim, c)
        return (2 if backward else 1) * 2 * (q_len + kv_len) * m * (head_dim + 1)

    def causal_memory(self, batch, heads, q_len, head_dim, element_size) -> int:
        """Bytes of the causal forward's working memory beyond q, k, v: the output, the running
        state and two groups' inputs, features, values, scores and outputs (the last group's
        are alive while the next one's are made)."""
        m, e, d = self.feature_count(head_dim), head_dim + 1, head_dim
        shape = (batch, heads, q_len, head_dim)
        _, g, c = chunk_groups(shape, self._chunk(), elements=self._group())[0]
        elems = q_len * d + m * e + 2 * g * c * (2 * d + 2 * m + 3 * e + c)
        return batch * heads * elems * element_size

    def backward_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4
    ) -> int:
        """The harness's model of the backward pass. Bidirectional: 3x the forward model
        (autograd's intermediates, their gradients, temporaries). Causal: the forward's, every
        chunk's saved state, the unnormalised output and one group's recomputed features, their
        saved intermediates and gradients, scores and inputs' gradients."""
        forward = self.analytic_mem_bytes(
            batch, heads, q_len, kv_len, head_dim, causal, element_size
        )
        if not causal:
            return 3 * forward
        shape, m, e = (batch, heads, q_len, head_dim), self.feature_count(head_dim), head_dim + 1
        _, g, c = chunk_groups(shape, self._chunk(), elements=self._group())[0]
        saved = -(-q_len // c) * m * e + q_len * e
        group = g * c * (6 * m + 4 * e + 2 * c + 2 * head_dim)
        return forward + element_size * batch * heads * (saved + group)


def _chunk_pairs(q_len: int, chunk: int) -> int:
    """Twice the (query, key) pairs of all the chunks' ``(c, c)`` blocks: ``2 sum c^2``."""
    c = min(chunk, q_len)
    return 2 * (q_len // c * c * c + (q_len % c) ** 2)
