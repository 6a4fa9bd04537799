"""Accuracy of a variant against exact float64 softmax attention on the same inputs.

The reference is :mod:`harness.measure.reference` (plain float64 matmuls, independent of any
variant), evaluated in blocks of query rows so that long sequences do not need the whole float64
``n x n`` matrix at once. Definitions:

* ``rel_err = ||O - O_ref||_F / ||O_ref||_F`` over the whole output, ``max_abs_err =
  max |O - O_ref|``, ``cosine`` = mean over (batch, head, query) of the cosine similarity of the
  output row with the reference row.
* ``grad_rel_err = sqrt(sum_x ||dx - dx_ref||^2 / sum_x ||dx_ref||^2)`` for ``x in (q, k, v)``:
  the relative error of the concatenated gradient, for one seeded upstream gradient ``dO``.
  The reference gradients are the analytic softmax-attention backward on the float64 reference
  probabilities (``dV = P^T dO``, ``dS = P * (dO V^T - rowsum(dO * O))``, ``dQ = s dS K``,
  ``dK = s dS^T Q``), checked against autograd on
  :func:`harness.measure.reference.reference_grads`.
* Effective attention matrix: every variant is linear in V, so feeding V = identity returns the
  ``Nq x Nk`` matrix ``A`` it applies. The identity is fed in column blocks of width ``D`` (so
  every variant sees a value head dimension it supports) for batch element 0 and all heads.
  ``attn_tv = mean over rows of 0.5 * sum_j |P_ij - A_ij|`` on the raw rows. Rows of ``A`` can
  hold negative entries or not sum to one (Linformer, Nystrom), so ``attn_kl = mean over rows of
  KL(P || A+)`` where ``A+`` is ``A`` clamped at 0, renormalised to sum 1, and floored at
  ``1e-12``; an all-non-positive row becomes uniform. KL is in nats.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from harness.measure.reference import reference_mask, reference_probs

#: Float64 elements of one reference score block (query rows x keys x batch x heads).
REF_BLOCK_ELEMENTS = 2**24  # 128 MB in float64
KL_FLOOR = 1e-12


def _row_blocks(q: Tensor, k: Tensor) -> list[tuple[int, int]]:
    b, h, nq, _ = q.shape
    rows = max(1, REF_BLOCK_ELEMENTS // max(1, b * h * k.shape[-2]))
    return [(s, min(nq, s + rows)) for s in range(0, nq, rows)]


def _block_probs(q: Tensor, k: Tensor, causal: bool, scale: float, start: int, end: int) -> Tensor:
    """Reference probabilities for query rows ``[start, end)``, ``(B, H, end-start, Nk)``."""
    mask = None
    if causal:
        mask = reference_mask(q.shape[-2], k.shape[-2], device=q.device)[start:end]
    return reference_probs(q[:, :, start:end], k, causal=False, scale=scale, mask=mask)


def reference_output(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float) -> Tensor:
    """Exact float64 attention output ``(B, H, Nq, Dv)``, computed in blocks of query rows."""
    v64 = v.detach().double()
    out = [
        torch.matmul(_block_probs(q, k, causal, scale, s, e), v64) for s, e in _row_blocks(q, k)
    ]
    return torch.cat(out, dim=2)


def reference_gradients(
    q: Tensor, k: Tensor, v: Tensor, grad_out: Tensor, causal: bool, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact float64 ``(dq, dk, dv)`` for upstream gradient ``grad_out``, in query-row blocks."""
    q64, k64, v64 = (t.detach().double() for t in (q, k, v))
    go = grad_out.detach().double()
    dq = torch.empty_like(q64)
    dk = torch.zeros_like(k64)
    dv = torch.zeros_like(v64)
    for s, e in _row_blocks(q, k):
        p = _block_probs(q, k, causal, scale, s, e)  # (B, H, r, Nk)
        go_blk = go[:, :, s:e]  # (B, H, r, Dv)
        dv += torch.matmul(p.transpose(-2, -1), go_blk)
        dp = torch.matmul(go_blk, v64.transpose(-2, -1))  # (B, H, r, Nk)
        out_blk = torch.matmul(p, v64)  # rowsum(dP * P) == rowsum(dO * O)
        ds = p * (dp - (go_blk * out_blk).sum(-1, keepdim=True))
        dq[:, :, s:e] = torch.matmul(ds, k64) * scale
        dk += torch.matmul(ds.transpose(-2, -1), q64[:, :, s:e]) * scale
    return dq, dk, dv


def output_errors(out: Tensor, ref: Tensor) -> dict[str, float]:
    """``rel_err``, ``max_abs_err`` and mean per-query ``cosine`` of ``out`` against ``ref``."""
    out64, ref64 = out.detach().double(), ref.detach().double()
    diff = out64 - ref64
    cos = torch.nn.functional.cosine_similarity(out64, ref64, dim=-1, eps=1e-30)
    return {
        "rel_err": (diff.norm() / ref64.norm()).item(),
        "max_abs_err": diff.abs().max().item(),
        "cosine": cos.mean().item(),
    }


def grad_rel_error(grads: tuple[Tensor, ...], refs: tuple[Tensor, ...]) -> float:
    """Relative error of the concatenated gradients (see the module docstring)."""
    num = sum(((g.double() - r) ** 2).sum() for g, r in zip(grads, refs))
    den = sum((r**2).sum() for r in refs)
    return math.sqrt(float(num) / float(den))


def effective_attention(variant: torch.nn.Module, q: Tensor, k: Tensor, causal: bool) -> Tensor:
    """The ``(1, H, Nq, Nk)`` matrix the variant applies to V, for batch element 0.

    V = identity is fed in column blocks of width ``D`` (the last block zero-padded), so each call
    has the shape of an ordinary call with batch 1.
    """
    q0, k0 = q[:1], k[:1]
    _, h, nq, d = q0.shape
    nk = k0.shape[-2]
    blocks = []
    with torch.no_grad():
        for start in range(0, nk, d):
            width = min(d, nk - start)
            v_blk = torch.zeros(1, h, nk, d, dtype=q.dtype, device=q.device)  # (1, H, Nk, D)
            idx = torch.arange(width, device=q.device)
            v_blk[:, :, start + idx, idx] = 1
            out = variant(q0, k0, v_blk, causal=causal)  # (1, H, Nq, D): columns of A
            blocks.append(out[..., :width].double())
    return torch.cat(blocks, dim=-1)  # (1, H, Nq, Nk)


def attention_divergence(exact: Tensor, approx: Tensor) -> dict[str, float]:
    """Mean row-wise ``attn_kl`` (KL(exact || clamped approx)) and ``attn_tv`` (raw rows)."""
    p, a = exact.double(), approx.double()
    tv = 0.5 * (p - a).abs().sum(-1)
    pos = a.clamp_min(0)
    total = pos.sum(-1, keepdim=True)
    uniform = torch.full_like(pos, 1.0 / pos.shape[-1])
    a_plus = torch.where(total > 0, pos / total.clamp_min(1e-300), uniform).clamp_min(KL_FLOOR)
    # 0 * log 0 = 0 for masked (causal) entries of the exact row.
    terms = torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - torch.log(a_plus)), 0.0)
    return {"attn_kl": terms.sum(-1).mean().item(), "attn_tv": tv.mean().item()}


def upstream_grad(out_shape: torch.Size, dtype: torch.dtype, device: Any, seed: int) -> Tensor:
    """A seeded, never-zero upstream gradient ``dO`` (drawn in float64 on the CPU)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 1_000_003)
    return torch.randn(out_shape, generator=gen, dtype=torch.float64).to(dtype).to(device)


def accuracy_once(
    variant: torch.nn.Module,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool,
    scale: float,
    seed: int,
    backward: bool,
    attn_matrix_max_n: int,
) -> dict[str, float]:
    """Accuracy of one built variant on one set of inputs.

    Args:
        variant: The variant (``setup`` already called).
        q: ``(B, H, Nq, D)`` queries in the point's dtype.
        k: ``(B, H, Nk, D)`` keys.
        v: ``(B, H, Nk, Dv)`` values.
        causal: Causal attention (bottom-right aligned).
        scale: Softmax scale the variant uses (its config), given to the reference.
        seed: Seed of the upstream gradient.
        backward: Also compare gradients (``grad_rel_err``).
        attn_matrix_max_n: Compute ``attn_kl``/``attn_tv`` only when ``max(Nq, Nk)`` <= this.

    Returns:
        ``rel_err``, ``max_abs_err``, ``cosine`` and, where computed, ``grad_rel_err``,
        ``attn_kl``, ``attn_tv``.
    """
    with torch.no_grad():
        out = variant(q, k, v, causal=causal)
    ref = reference_output(q, k, v, causal, scale)
    result = output_errors(out, ref)
    del out, ref
    if backward:
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        out = variant(*leaves, causal=causal)
        grad_out = upstream_grad(out.shape, out.dtype, out.device, seed)
        grads = torch.autograd.grad(out, leaves, grad_out)
        refs = reference_gradients(q, k, v, grad_out, causal, scale)
        result["grad_rel_err"] = grad_rel_error(grads, refs)
        del out, grads, refs, leaves
    if max(q.shape[-2], k.shape[-2]) <= attn_matrix_max_n:
        approx = effective_attention(variant, q, k, causal)
        exact = _block_probs(q[:1], k[:1], causal, scale, 0, q.shape[-2])
        result.update(attention_divergence(exact, approx))
    return result


def summarize(runs: list[dict[str, float]]) -> dict[str, float | None]:
    """Mean of each metric over seeds, plus ``rel_err_std`` and ``grad_rel_err_std``.

    The standard deviation is the population one over the seeds run (0 for a single seed).
    """
    keys = {key for run in runs for key in run}
    out: dict[str, float | None] = {}
    for key in keys:
        values = torch.tensor([run[key] for run in runs if key in run], dtype=torch.float64)
        out[key] = values.mean().item()
        if key in ("rel_err", "grad_rel_err"):
            out[f"{key}_std"] = values.std(unbiased=False).item()
    return out
