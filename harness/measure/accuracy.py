"""Accuracy of a variant against exact float64 softmax attention on the same inputs.

The reference is plain float64 matmuls (:mod:`harness.measure.reference`'s conventions,
independent of any variant), evaluated over blocks of query rows: softmax rows are independent,
so a block needs ``block x Nk`` float64 scores, never the whole ``Nq x Nk`` matrix. Definitions:

* ``rel_err = ||O - O_ref||_F / ||O_ref||_F`` over the whole output, ``max_abs_err =
  max |O - O_ref|``, ``cosine`` = mean over (batch, head, query) of the cosine similarity of the
  output row with the reference row.
* Baselines on the same inputs: ``baseline_zeros_rel_err``, the error of outputting zeros (1 by
  the definition of relative error), and ``baseline_uniform_rel_err``, the error of uniform
  attention (each query's output is the mean of V over the keys it may see; causal-aware,
  bottom-right aligned). A variant above the uniform baseline does worse than ignoring q and k.
* ``grad_rel_err = sqrt(sum_x ||dx - dx_ref||^2 / sum_x ||dx_ref||^2)`` for ``x in (q, k, v)``:
  the relative error of the concatenated gradient, for one seeded upstream gradient ``dO``.
  The reference gradients are the analytic softmax-attention backward on the float64 reference
  probabilities (``dV = P^T dO``, ``dS = P * (dO V^T - rowsum(dO * O))``, ``dQ = s dS K``,
  ``dK = s dS^T Q``), per query block (dK and dV accumulate over the blocks), checked against
  autograd on :func:`harness.measure.reference.reference_grads`.
* Sampled rows: where even the blocked reference costs more than ``measure.reference_max_work``
  float64 FLOPs (:func:`reference_flops`), the output metrics cover a seeded sample of query
  rows (:func:`sample_rows`) and the row says how many (``ref_rows``; null means all rows). The
  gradient is then that of the loss ``<dO, O>`` with ``dO`` zero outside the sampled rows, which
  the blocked backward computes exactly from those rows alone.
* Effective attention matrix: every variant is linear in V, so feeding V = identity returns the
  ``Nq x Nk`` matrix ``A`` it applies (batch element 0, all heads). Its divergences from the
  exact matrix ``P`` are in :mod:`harness.measure.divergence`.
* Grouped-query heads (k, v with ``Hkv`` < ``H`` heads): the reference repeats each key/value
  head for its group (:func:`harness.measure.reference.repeat_kv`); the gradients of k and v are
  the sums over their group's query heads.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from harness.measure.divergence import attention_divergence
from harness.measure.reference import reference_probs, repeat_kv

#: Float64 elements of one reference score block (query rows x keys x batch x heads).
REF_BLOCK_ELEMENTS = 2**24  # 128 MB in float64
#: The fewest query rows a sampled reference covers (fewer would make a noisy figure).
MIN_REF_ROWS = 128


def reference_flops(
    batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, backward: bool
) -> int:
    """Float64 FLOPs of the blocked reference: output, and the gradients when ``backward``.

    Per query row and key: scores and ``P V`` (``2 (D + Dv)``); the backward adds ``P V`` again,
    ``dV``, ``dP``, ``dQ`` and ``dK`` (``2 (2D + 3Dv)``). ``Dv = D`` here.
    """
    per_pair = 2 * (2 * head_dim) + (2 * 5 * head_dim if backward else 0)
    return batch * heads * q_len * kv_len * per_pair


def reference_rows(work: int, q_len: int, max_work: float | None) -> int | None:
    """How many query rows the reference may cover (``None``: all of them).

    Args:
        work: :func:`reference_flops` of the whole point.
        q_len: Query rows of the point.
        max_work: ``measure.reference_max_work``; ``None`` never samples.
    """
    if max_work is None or work <= max_work:
        return None
    rows = max(MIN_REF_ROWS, int(q_len * max_work // work))
    return None if rows >= q_len else rows


def sample_rows(q_len: int, count: int, seed: int) -> Tensor:
    """``count`` distinct query rows of ``q_len``, drawn from ``seed``, in ascending order."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 2_000_003)
    return torch.randperm(q_len, generator=gen)[:count].sort().values


def _blocks(q: Tensor, k: Tensor, rows: Tensor | None) -> list[Tensor | slice]:
    """Query-row blocks of at most :data:`REF_BLOCK_ELEMENTS` scores: slices of ``[0, Nq)``, or
    index tensors cut from ``rows``."""
    b, h, nq, _ = q.shape
    size = max(1, REF_BLOCK_ELEMENTS // max(1, b * h * k.shape[-2]))
    if rows is None:
        return [slice(s, min(nq, s + size)) for s in range(0, nq, size)]
    return list(rows.split(size))


def _positions(index: Tensor | slice, nq: int) -> Tensor:
    return torch.arange(nq)[index] if isinstance(index, slice) else index


def block_probs(q: Tensor, k: Tensor, causal: bool, scale: float, index: Tensor | slice) -> Tensor:
    """Reference probabilities ``(B, H, r, Nk)`` of the query rows ``index``.

    The causal mask is built for these rows only (``r x Nk``), never for the whole matrix.
    """
    nq, nk = q.shape[-2], k.shape[-2]
    mask = None
    if causal:
        rows = _positions(index, nq).to(q.device)
        mask = torch.arange(nk, device=q.device)[None, :] <= (rows + (nk - nq))[:, None]
    return reference_probs(q[:, :, index], k, causal=False, scale=scale, mask=mask)


def reference_output(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, rows: Tensor | None = None
) -> Tensor:
    """Exact float64 output ``(B, H, R, Dv)`` of the query rows ``rows`` (all when ``None``)."""
    v64 = repeat_kv(v.detach().double(), q.shape[1])
    out = [torch.matmul(block_probs(q, k, causal, scale, i), v64) for i in _blocks(q, k, rows)]
    return torch.cat(out, dim=2)


def reference_gradients(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    grad_out: Tensor,
    causal: bool,
    scale: float,
    rows: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact float64 ``(dq, dk, dv)`` for an upstream gradient nonzero only on ``rows``.

    Args:
        q: ``(B, H, Nq, D)`` queries.
        k: ``(B, H, Nk, D)`` keys.
        v: ``(B, H, Nk, Dv)`` values.
        grad_out: ``(B, H, R, Dv)``: the upstream gradient of the rows ``rows`` (all rows when
            ``rows`` is ``None``); zero on every other row.
        causal: Bottom-right causal mask.
        scale: Softmax scale.
        rows: Ascending query rows, or ``None`` for all.

    Returns:
        ``dq (B, H, Nq, D)`` (zero outside ``rows``), ``dk``, ``dv``, float64 (``dk``, ``dv``
        with the heads of ``k``, ``v``).
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    q64 = q.detach().double()
    k64, v64 = (repeat_kv(t.detach().double(), heads) for t in (k, v))
    go = grad_out.detach().double()
    dq = torch.zeros_like(q64)
    dk = torch.zeros_like(k64)
    dv = torch.zeros_like(v64)
    done = 0
    for index in _blocks(q, k, rows):
        p = block_probs(q, k, causal, scale, index)  # (B, H, r, Nk)
        go_blk = go[:, :, done : done + p.shape[-2]]  # (B, H, r, Dv)
        done += p.shape[-2]
        dv += torch.matmul(p.transpose(-2, -1), go_blk)
        dp = torch.matmul(go_blk, v64.transpose(-2, -1))  # (B, H, r, Nk)
        out_blk = torch.matmul(p, v64)  # rowsum(dP * P) == rowsum(dO * O)
        ds = p * (dp - (go_blk * out_blk).sum(-1, keepdim=True))
        dq[:, :, index] = torch.matmul(ds, k64) * scale
        dk += torch.matmul(ds.transpose(-2, -1), q64[:, :, index]) * scale
    if kv_heads != heads:  # a shared key/value head gets the sum over its group
        dk, dv = (t.unflatten(1, (kv_heads, heads // kv_heads)).sum(2) for t in (dk, dv))
    return dq, dk, dv


def uniform_output(v: Tensor, q_len: int, causal: bool, rows: Tensor | None = None) -> Tensor:
    """Uniform attention ``(B, H, R, Dv)`` in float64: the mean of V over the visible keys.

    Causal query ``i`` sees keys ``j <= i + Nk - Nq`` (bottom right); a query that sees no key
    outputs zeros.
    """
    v64 = v.detach().double()
    nk = v64.shape[-2]
    positions = torch.arange(q_len) if rows is None else rows
    if not causal:
        return v64.mean(-2, keepdim=True).expand(*v64.shape[:2], len(positions), v64.shape[-1])
    last = (positions + (nk - q_len)).to(v64.device)  # last visible key of each row
    csum = v64.cumsum(-2)[:, :, last.clamp(min=0)]  # (B, H, R, Dv)
    out = csum / (last.clamp(min=0) + 1).to(v64.dtype)[:, None]
    return torch.where((last >= 0)[:, None], out, torch.zeros_like(out))


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


def baselines(ref: Tensor, uniform: Tensor) -> dict[str, float]:
    """Relative errors of the trivial outputs: zeros (1 by definition) and uniform attention."""
    ref64 = ref.detach().double()
    return {
        "baseline_zeros_rel_err": (ref64.norm() / ref64.norm()).item(),
        "baseline_uniform_rel_err": ((uniform - ref64).norm() / ref64.norm()).item(),
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
    _, _, nq, d = q0.shape
    h, nk = k0.shape[1], k0.shape[-2]  # v takes the heads of k (grouped heads: fewer)
    blocks = []
    with torch.no_grad():
        for start in range(0, nk, d):
            width = min(d, nk - start)
            v_blk = torch.zeros(1, h, nk, d, dtype=q.dtype, device=q.device)  # (1, Hkv, Nk, D)
            idx = torch.arange(width, device=q.device)
            v_blk[:, :, start + idx, idx] = 1
            out = variant(q0, k0, v_blk, causal=causal)  # (1, H, Nq, D): columns of A
            blocks.append(out[..., :width].double())
    return torch.cat(blocks, dim=-1)  # (1, H, Nq, Nk)


def upstream_grad(out_shape: torch.Size, dtype: torch.dtype, device: Any, seed: int) -> Tensor:
    """A seeded, never-zero upstream gradient ``dO`` (drawn in float64 on the CPU)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 1_000_003)
    return torch.randn(out_shape, generator=gen, dtype=torch.float64).to(dtype).to(device)


def _gradient_error(variant, q, k, v, causal, scale, seed, rows) -> float:
    """``grad_rel_err`` for the seeded ``dO``, restricted to ``rows`` when sampling."""
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    out = variant(*leaves, causal=causal)
    grad_out = upstream_grad(out.shape, out.dtype, out.device, seed)
    if rows is not None:
        keep = torch.zeros(out.shape[-2], dtype=torch.bool, device=out.device)
        keep[rows.to(out.device)] = True
        grad_out = grad_out * keep[:, None]
    grads = torch.autograd.grad(out, leaves, grad_out)
    sampled = grad_out if rows is None else grad_out[:, :, rows.to(out.device)]
    refs = reference_gradients(q, k, v, sampled, causal, scale, rows)
    return grad_rel_error(grads, refs)


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
    rows: Tensor | None = None,
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
        attn_matrix_max_n: Compute the effective-matrix divergences only when
            ``max(Nq, Nk)`` <= this.
        rows: Ascending query rows the reference covers (:func:`sample_rows`); ``None``: all.

    Returns:
        ``rel_err``, ``max_abs_err``, ``cosine``, the two baselines and, where computed,
        ``grad_rel_err`` and the divergences of :func:`attention_divergence`.
    """
    with torch.no_grad():
        out = variant(q, k, v, causal=causal)
    ref = reference_output(q, k, v, causal, scale, rows)
    if rows is not None:
        out = out[:, :, rows.to(out.device)]
    result = output_errors(out, ref)
    uniform = uniform_output(repeat_kv(v, q.shape[1]), q.shape[-2], causal, rows)
    result.update(baselines(ref, uniform))
    del out, ref
    if backward:
        result["grad_rel_err"] = _gradient_error(variant, q, k, v, causal, scale, seed, rows)
    if max(q.shape[-2], k.shape[-2]) <= attn_matrix_max_n:
        approx = effective_attention(variant, q, k, causal)
        exact = block_probs(q[:1], k[:1], causal, scale, slice(None))
        result.update(attention_divergence(exact, approx))
    return result


def summarize(runs: list[dict[str, float]]) -> dict[str, float | None]:
    """Mean of each metric over seeds, plus ``rel_err_std`` and ``grad_rel_err_std``.

    A metric a seed could not compute (``None``) is left out of its mean. The standard deviation
    is the population one over the seeds run (0 for a single seed).
    """
    keys = {key for run in runs for key in run}
    out: dict[str, float | None] = {}
    for key in keys:
        got = [run[key] for run in runs if run.get(key) is not None]
        if not got:  # e.g. attn_kl_support where no row has mass on the variant's support
            out[key] = None
            continue
        values = torch.tensor(got, dtype=torch.float64)
        out[key] = values.mean().item()
        if key in ("rel_err", "grad_rel_err"):
            out[f"{key}_std"] = values.std(unbiased=False).item()
    return out
