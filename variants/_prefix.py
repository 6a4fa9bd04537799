"""Chunked causal linear attention: the prefix sums shared by Performer and linear attention.

Kernelised attention (Katharopoulos et al. 2020, "Transformers are RNNs"; Choromanski et al.
2020, "Rethinking Attention with Performers") writes causal attention with feature maps
``phi_q``, ``phi_k`` as prefix sums ``out_i = sum_{j <= i} (phi_q_i . phi_k_j) v_j``. Computing
the prefix sum token by token would need an ``(n, m, d)`` tensor (or a Python loop); here the
sequence is cut into chunks of ``chunk_size`` tokens:

* within a chunk, the masked quadratic form ``tril(phi_q_c phi_k_c^T) v_c`` (chunk x chunk);
* across chunks, a running ``(m, d)`` state: the exclusive cumulative sum of the chunk summaries
  ``phi_k_c^T v_c``, taken as one batched matmul with a strictly lower-triangular ``(C, C)``
  ones matrix (counted in the FLOPs: ``2 C^2 m d`` per head) and applied as ``phi_q_c @ state_c``.

Every product is a 3-d ``bmm`` over (batch, head, chunk), and without autograd the chunk's own
term accumulates into the inter-chunk term's buffer (fresh large tensors cost page faults on
the CPU: docs/performance.md).

Working memory per head is ``O(n * chunk + (n / chunk) * m * d)``, i.e. ``O(n * m)`` for
``chunk >= d``; no ``(n, m, d)`` tensor is formed. Normalisation is left to the caller: append a
column of ones to ``v`` and the last output column is the denominator.

Causal cross-attention (``Nq <= Nk``) uses the suite's bottom-right alignment: the first
``Nk - Nq`` keys are visible to every query and enter as one shared prefix state; the remaining
``Nq`` keys align one-to-one with the queries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def with_ones_column(v: Tensor) -> Tensor:
    """``(..., N, Dv)`` -> ``(..., N, Dv + 1)`` with a last column of ones (one ``cat`` of an
    expanded scalar): kernel attention's denominator as one more output column."""
    return torch.cat([v, v.new_ones((1,) * v.dim()).expand(*v.shape[:-1], 1)], dim=-1)


def causal_linear_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, chunk_size: int) -> Tensor:
    """Unnormalised causal kernel attention ``sum_{j <= i + Nk - Nq} (phi_q_i . phi_k_j) v_j``.

    Args:
        phi_q: ``(B, H, Nq, m)`` query features.
        phi_k: ``(B, H, Nk, m)`` key features, ``Nk >= Nq``.
        v: ``(B, H, Nk, Dv)`` values (append a ones column to get the denominator too).
        chunk_size: Tokens per chunk of the prefix sum.

    Returns:
        ``(B, H, Nq, Dv)``.
    """
    b, h, nq, m = phi_q.shape
    nk, dv = phi_k.shape[-2], v.shape[-1]
    if nk < nq:
        raise ValueError(f"causal kernel attention needs kv_len >= q_len, got {nk} < {nq}")
    offset = nk - nq
    head_state = None
    if offset > 0:
        # keys every query sees (bottom-right alignment): one shared state
        head_state = phi_k[..., :offset, :].transpose(-2, -1) @ v[..., :offset, :]  # (B,H,m,Dv)
        phi_k, v = phi_k[..., offset:, :], v[..., offset:, :]

    chunk = min(chunk_size, nq)
    pad = (-nq) % chunk
    if pad:
        # zero features at the end: padded keys add nothing, padded queries are dropped
        phi_q = F.pad(phi_q, (0, 0, 0, pad))
        phi_k = F.pad(phi_k, (0, 0, 0, pad))
        v = F.pad(v, (0, 0, 0, pad))
    n_chunks = (nq + pad) // chunk
    bhc = b * h * n_chunks
    # 3-d batches of chunks for bmm (4- and 5-d matmuls fold their batch dims with copies)
    qc = phi_q.reshape(bhc, chunk, m)
    kc = phi_k.reshape(bhc, chunk, m)
    vc = v.reshape(bhc, chunk, dv)

    summaries = torch.bmm(kc.transpose(-2, -1), vc)  # (BHC, m, Dv)
    # exclusive prefix sum over chunks, state_c = sum_{c' < c} summary_c', as one batched
    # matmul with a strictly lower-triangular ones matrix: one pass over the summaries instead
    # of a shifted copy and a cumsum along a strided dimension (docs/performance.md)
    idx = torch.arange(n_chunks, device=v.device)
    lower = (idx[:, None] > idx[None, :]).to(v.dtype)  # (C, C); tril_ here took a thread hop
    states = lower @ summaries.view(b * h, n_chunks, m * dv)  # (BH, C, m * Dv)
    states = states.view(b, h, n_chunks, m, dv)
    if head_state is not None:
        states = states + head_state.unsqueeze(2)
    inter = torch.bmm(qc, states.view(bhc, m, dv))  # (BHC, c, Dv)
    # the chunk's own keys: masked quadratic form; tril_ in place (bmm keeps no output)
    scores = torch.bmm(qc, kc.transpose(-2, -1)).tril_()  # (BHC, c, c)
    tracked = torch.is_grad_enabled() and any(t.requires_grad for t in (qc, kc, vc))
    # without a graph, accumulate into the inter-chunk term's buffer (out= is not differentiable)
    out = torch.baddbmm(inter, scores, vc, out=None if tracked else inter)  # (BHC, c, Dv)
    return out.view(b, h, n_chunks * chunk, dv)[:, :, :nq]


def causal_linear_flops(q_len: int, kv_len: int, features: int, v_dim: int, chunk: int) -> int:
    """Forward FLOPs of :func:`causal_linear_attention` for one (batch, head)."""
    return sum(_flop_terms(q_len, kv_len, features, v_dim, chunk))


def causal_linear_backward_flops(
    q_len: int, kv_len: int, features: int, v_dim: int, chunk: int
) -> int:
    """Backward FLOPs of :func:`causal_linear_attention` for one (batch, head): every matmul
    takes both gradients (2x) except the prefix sum's, whose ones matrix is a constant (1x)."""
    *matmuls, states = _flop_terms(q_len, kv_len, features, v_dim, chunk)
    return 2 * sum(matmuls) + states


def _flop_terms(q_len: int, kv_len: int, features: int, v_dim: int, chunk: int) -> list[int]:
    """(shared head state, summaries, inter-chunk, intra-chunk, prefix-sum matmul) FLOPs."""
    offset = kv_len - q_len
    c = min(chunk, q_len)
    n = -(-q_len // c) * c  # padded length
    head = 2 * offset * features * v_dim
    summaries = 2 * n * features * v_dim
    inter = 2 * n * features * v_dim
    intra = 2 * n * c * features + 2 * n * c * v_dim
    states = 2 * (n // c) ** 2 * features * v_dim  # (C, C) ones matrix times the summaries
    return [head, summaries, inter, intra, states]
