"""The delta rule (DeltaNet) and its gated form (Gated DeltaNet), chunk by chunk.

DeltaNet (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over Sequence
Length") writes ``S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T`` and reads
``o_t = q_t S_t``; Gated DeltaNet (Yang et al. 2025) adds the decay ``alpha_t`` (1 without the
gate). States are ``(D, Dv)``, key dim first.

Within a chunk, with ``g_t`` the cumulative log gate from the chunk's start (inclusive) and
``G_ti = exp(g_t - g_i)``, the state is ``S_t = exp(g_t) S_0 + sum_{i <= t} G_ti k_i^T u_i`` with
``u_t = beta_t (v_t - exp(g_t) k_t S_0 - sum_{i < t} G_ti (k_t . k_i) u_i)``: a unit lower
triangular system. Its solution is the WY form ``u = U - W S_0`` with
``T = (I + tril_-1(diag(beta) K K^T * G))^-1``, ``W = T diag(beta) exp(g) K``,
``U = T diag(beta) V``, none of which depends on ``S_0``: a block of chunks gets its ``T`` from
one batched ``solve_triangular``. The loop across chunks is then one ``(D, D) @ (D, Dv)``
product per chunk, ``S <- (exp(g_c) I - K_c^T W) S + K_c^T U`` with ``K_c = exp(g_c - g) K``
(``g_c`` the chunk's last), and the outputs ``o = (exp(g) Q) S_0 + tril(Q K^T * G) u`` are again
batched.
The plain reference is
:mod:`variants.engines.delta_naive`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from variants.engines.decay import (
    batched_addmm,
    check_inputs,
    chunk_blocks,
    chunks_per_block,
    compute_dtype,
    join_outputs,
    scan_states,
)

#: Tokens per chunk the callers take by default (``scripts/bench_recurrent.py``).
DEFAULT_CHUNK_SIZE = 64


def _delta_blocks(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_alpha: Tensor | None, state: Tensor
) -> tuple[Tensor, Tensor]:
    """The delta rule over blocks ``(B, H, nc, c, .)`` (``beta``, ``log_alpha``: ``(B, H, nc, c,
    1)``) from ``state``: ``(B, H, nc * c, Dv)`` and the state after the last chunk."""
    c = q.shape[-2]
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    if log_alpha is None:
        qk = (q @ k.transpose(-2, -1)) * causal  # (B, H, nc, c, c)
        kk = (k * beta) @ k.transpose(-2, -1)
        q_read, k_write, k_state, carry = q, k * -beta, k, None
    else:
        g = log_alpha.cumsum(dim=-2)  # (B, H, nc, c, 1)
        # -inf above the diagonal before exp: exp(g_t - g_i) for i > t may overflow (and
        # poison gradients)
        gates = (g - g.transpose(-2, -1)).masked_fill(~causal, float("-inf")).exp()
        qk = (q @ k.transpose(-2, -1)) * gates  # (B, H, nc, c, c)
        kk = ((k * beta) @ k.transpose(-2, -1)) * gates
        growth, last = g.exp(), g[..., -1:, :]  # the gate from the chunk's start; (.., 1, 1)
        q_read, k_write = q * growth, k * (-beta * growth)
        k_state, carry = k * (last - g).exp(), last.exp()
    # T = (I + tril_-1(kk))^-1, the solve reading only kk's strict lower part (the unit diagonal
    # implied); W = T diag(beta) exp(g) K comes out negated, so every update below is a fused
    # multiply-add.
    eye = torch.eye(c, device=q.device, dtype=q.dtype).expand_as(kk)
    t = torch.linalg.solve_triangular(kk, eye, upper=False, unitriangular=True)
    w_neg, u = t @ k_write, t @ (v * beta)  # (B, H, nc, c, D), (B, H, nc, c, Dv)
    k_t = k_state.transpose(-2, -1)  # (B, H, nc, D, c)
    transition = k_t @ w_neg  # (B, H, nc, D, D): carry I - K^T W
    # in place on the product's own output, which autograd does not keep
    transition.diagonal(dim1=-2, dim2=-1).add_(1.0 if carry is None else carry.squeeze(-1))
    before, state = scan_states(transition, k_t @ u, state, matrix=True)
    u = batched_addmm(u, w_neg, before)  # U - W S_0
    out = batched_addmm(qk @ u, q_read, before)  # (B, H, nc, c, Dv)
    return out.flatten(-3, -2), state


def delta_rule(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, chunk_size: int,
    log_alpha: Tensor | None = None, state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The (gated) delta rule, chunk by chunk.

    ``S_t = alpha_t (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t`` (``k_t`` a row,
    ``alpha_t = exp(log_alpha_t)``, 1 without the gate, ``S_{-1} = state``), read after the
    write: ``o_t = q_t S_t``.

    Args:
        q: ``(B, H, N, D)`` queries (normalised and scaled by the caller).
        k: ``(B, H, N, D)`` keys (L2-normalised by the caller).
        v: ``(B, H, N, Dv)`` values.
        beta: ``(B, H, N)`` write strengths in ``(0, 1)``.
        chunk_size: Tokens per chunk (:data:`DEFAULT_CHUNK_SIZE`).
        log_alpha: ``(B, H, N)`` log gates ``<= 0``, or None for DeltaNet.
        state: ``(B, H, D, Dv)`` state before the first token (key dim first); zeros if None.

    Returns:
        ``(B, H, N, Dv)`` outputs and the ``(B, H, D, Dv)`` state after the last token, in
        ``q``'s dtype (half precision computes in float32).
    """
    check_inputs("delta_rule", q, k, v, chunk_size, state)
    for name, x in (("beta", beta), ("log_alpha", log_alpha)):
        if x is not None and x.shape != q.shape[:-1]:
            raise ValueError(f"delta_rule: {name} must be (B, H, N) = {tuple(q.shape[:-1])}, "
                             f"got {tuple(x.shape)}")  # fmt: skip
    dtype = compute_dtype(q.dtype)
    b, h, _, d = q.shape
    if state is None:
        state = q.new_zeros(b, h, d, v.shape[-1], dtype=dtype)
    state = state.to(dtype)
    columns = [q, k, v, beta[..., None]] + ([] if log_alpha is None else [log_alpha[..., None]])
    outs = []
    chunks = chunks_per_block(q, v, chunk_size)
    for blocks in zip(*(chunk_blocks(x.to(dtype), chunk_size, chunks) for x in columns)):
        gate = blocks[4] if log_alpha is not None else None
        out, state = _delta_blocks(*blocks[:4], gate, state)
        outs.append(out)
    return join_outputs(outs, v).to(q.dtype), state.to(q.dtype)
