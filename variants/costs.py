"""Cost formulas shared by the variants' FLOP models (re-exported by :mod:`variants.base`).

Counts follow the suite's convention (:mod:`tests.test_flops`): matmul FLOPs, a multiply-add
counts 2; softmax, masks and other elementwise work are not counted.
"""

from __future__ import annotations


def visible_pairs(q_len: int, kv_len: int, causal: bool) -> int:
    """Number of (query, key) pairs the bottom-right causal mask leaves visible (all if not).

    Query ``i`` sees ``i + (kv_len - q_len) + 1`` keys (none when that is <= 0), so the count
    is ``kv_len (kv_len + 1) / 2 - off (off + 1) / 2`` with ``off = max(kv_len - q_len, 0)``.
    """
    if not causal:
        return q_len * kv_len
    hidden = max(kv_len - q_len, 0)
    return (kv_len * (kv_len + 1) - hidden * (hidden + 1)) // 2


def exact_attention_flops(
    batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, skip_masked: bool = False
) -> int:
    """Forward FLOPs of exact softmax attention: ``Q K^T`` and ``P V``, ``2 D`` each per pair.

    The one formula of the exact variants (``full``, ``sdpa``, ``xformers``, Longformer's
    ``dense_mask``). ``skip_masked=True`` counts only the causally visible pairs, for kernels
    that skip the masked tiles (fused causal kernels do about half the work); a kernel that
    applies the mask to a full score matrix does all of it (``skip_masked=False``).
    """
    return 4 * batch * heads * head_dim * visible_pairs(q_len, kv_len, skip_masked)


def recomputing_backward_flops(forward_flops: int) -> int:
    """Backward FLOPs of a fused (FlashAttention-style) kernel: 2.5x its forward.

    It keeps no probability matrix, so its backward recomputes ``Q K^T`` and then computes
    ``dV``, ``dP``, ``dQ`` and ``dK``: five matmuls of the forward's two (the count of
    ``torch.utils.flop_counter`` for the fused SDPA kernels).
    """
    return forward_flops * 5 // 2
