"""Chunked causal linear attention: the prefix sums shared by Performer and linear attention.

Kernelised attention (Katharopoulos et al. 2020, "Transformers are RNNs"; Choromanski et al.
2020, "Rethinking Attention with Performers") writes causal attention with feature maps
``phi_q``, ``phi_k`` as prefix sums ``out_i = sum_{j <= i} (phi_q_i . phi_k_j) v_j``. Computing
the prefix sum token by token would need an ``(n, m, d)`` tensor (or a Python loop); here the
sequence is cut into chunks of ``chunk_size`` tokens:

* within a chunk, the masked quadratic form ``tril(phi_q_c phi_k_c^T) v_c`` (chunk x chunk);
* across chunks, a running ``(m, d)`` state: the exclusive cumulative sum of the chunk summaries
  ``phi_k_c^T v_c``, applied as ``phi_q_c @ state_c``.

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
    qc = phi_q.reshape(b, h, n_chunks, chunk, m)  # (B, H, C, c, m)
    kc = phi_k.reshape(b, h, n_chunks, chunk, m)  # (B, H, C, c, m)
    vc = v.reshape(b, h, n_chunks, chunk, dv)  # (B, H, C, c, Dv)

    summaries = kc.transpose(-2, -1) @ vc  # (B, H, C, m, Dv)
    # exclusive prefix sum over chunks: state_c = sum_{c' < c} summary_c'
    states = torch.cat([torch.zeros_like(summaries[:, :, :1]), summaries[:, :, :-1]], dim=2)
    states = states.cumsum(dim=2)  # (B, H, C, m, Dv)
    if head_state is not None:
        states = states + head_state.unsqueeze(2)
    out = qc @ states  # (B, H, C, c, Dv)

    scores = qc @ kc.transpose(-2, -1)  # (B, H, C, c, c)
    keep = torch.ones(chunk, chunk, dtype=torch.bool, device=scores.device).tril()
    scores = scores.masked_fill(~keep, 0.0)
    out = out + scores @ vc  # (B, H, C, c, Dv)
    return out.reshape(b, h, n_chunks * chunk, dv)[:, :, :nq]


def causal_linear_flops(q_len: int, kv_len: int, features: int, v_dim: int, chunk: int) -> int:
    """Forward FLOPs of :func:`causal_linear_attention` for one (batch, head)."""
    offset = kv_len - q_len
    c = min(chunk, q_len)
    n = -(-q_len // c) * c  # padded length
    head = 2 * offset * features * v_dim
    summaries = 2 * n * features * v_dim
    inter = 2 * n * features * v_dim
    intra = 2 * n * c * features + 2 * n * c * v_dim
    return head + summaries + inter + intra
