"""Causal kernel attention by streamed prefix sums, shared by linear, Performer and Hedgehog.

Kernelised attention (Katharopoulos et al. 2020, "Transformers are RNNs"; Choromanski et al.
2020, "Rethinking Attention with Performers") writes causal attention with feature maps
``phi_q``, ``phi_k`` as ``out_i = sum_{j <= i} (phi_q_i . phi_k_j) v_j / sum_{j <= i} phi_q_i .
phi_k_j``. The features are made group by group from the caller's :class:`FeatureMaps`, so no
``(n, m)`` feature tensor is formed (:mod:`variants.engines.prefix_stream`); the backward is
streamed too (:mod:`variants.engines.prefix_backward`). Cross-attention (``Nq <= Nk``) is
bottom-right aligned: the first ``Nk - Nq`` keys, seen by every query, make the initial state.
The plain reference is :mod:`variants.engines.prefix_naive`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from variants.engines.prefix_backward import StreamedCausal
from variants.engines.prefix_stream import stream_forward


@dataclass(frozen=True)
class FeatureMaps:
    """How queries and keys become features; applied group by group inside the prefix sums.

    Attributes:
        query: ``query(x, *params)`` of ``x (..., H, N, D)`` -> ``(..., H, N, m)`` features.
        key: ``key(x, *params)`` -> key features, or their logits when ``key_is_log``.
        key_is_log: ``key`` returns logits ``l``; the features are ``exp(l - c)`` with ``c`` a
            running max per head (:mod:`variants.engines.prefix_stream`), which cancels
            in the output.

    Both maps must be differentiable functions of ``x`` and ``params`` (the backward recomputes
    them under autograd); without a graph they may work in place on their own results. Logits
    are shifted and exponentiated in place: ``key`` must return a new tensor whose own backward
    does not need it (a GEMM's output, say).
    """

    query: Callable[..., Tensor]
    key: Callable[..., Tensor]
    key_is_log: bool = False


def with_ones_column(v: Tensor) -> Tensor:
    """``(..., N, Dv)`` -> ``(..., N, Dv + 1)`` with a last column of ones (one ``cat`` of an
    expanded scalar): kernel attention's denominator as one more output column."""
    return torch.cat([v, v.new_ones((1,) * v.dim()).expand(*v.shape[:-1], 1)], dim=-1)


def kernel_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor) -> Tensor:
    """Normalised bidirectional kernel attention ``phi_q (phi_k^T [v, 1])`` with the last column
    (the denominator, positive features) divided out: ``(B, H, Nq, Dv)``."""
    out = phi_q @ (phi_k.transpose(-2, -1) @ with_ones_column(v))  # (B, H, Nq, Dv + 1)
    return out[..., :-1] / out[..., -1:].clamp_min(torch.finfo(out.dtype).tiny)


def causal_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, maps: FeatureMaps, chunk: int,
    params: Sequence[Tensor] = (), group: int | None = None,
) -> Tensor:  # fmt: skip
    """Normalised causal kernel attention over ``j <= i + Nk - Nq``, features made per group.

    Args:
        q: ``(B, H, Nq, D)`` queries.
        k: ``(B, H, Nk, D)`` keys, ``Nk >= Nq``.
        v: ``(B, H, Nk, Dv)`` values.
        maps: The feature maps (:class:`FeatureMaps`).
        chunk: Tokens per chunk of the masked quadratic form.
        params: Tensors the maps take after ``x`` (gradients flow to them).
        group: Query elements per streamed group (default
            :func:`~variants.engines.prefix_stream.group_elements`).

    Returns:
        ``(B, H, Nq, Dv)``.
    """
    nq, nk = q.shape[-2], k.shape[-2]
    if nk < nq:
        raise ValueError(f"causal kernel attention needs kv_len >= q_len, got {nk} < {nq}")
    params = tuple(params)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *params)):
        return StreamedCausal.apply(maps, chunk, group, q, k, v, *params)
    return stream_forward(q, k, v, maps, chunk, params, None, group)
