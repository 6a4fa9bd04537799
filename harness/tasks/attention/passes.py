"""One pass of an attention point: its FLOPs, its memory budget, its timing and memory, and how a
failure reads in its row."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from harness.measure import accuracy, budget, memory, timing
from harness.measure.config import MeasureConfig
from harness.measure.failures import NonFinite, classify, finite  # noqa: F401 (re-exported)
from variants.base import AttentionVariant

if TYPE_CHECKING:
    from harness.app.point import Point

#: The point's shape fields, in the order of a variant's ``flops(batch, heads, q_len, ...)``.
SHAPE = ("batch", "heads", "q_len", "kv_len", "head_dim")


def shape_of(point: Point) -> tuple[int, ...]:
    """``(batch, heads, q_len, kv_len, head_dim)`` of a point."""
    return tuple(getattr(point, f) for f in SHAPE)


def grouped_heads(point: Point) -> int | None:
    """The point's ``kv_heads`` where it has fewer key/value heads than heads, else None."""
    kv_heads = getattr(point, "kv_heads", None)
    return None if kv_heads in (None, point.heads) else kv_heads


def pass_flops(
    variant: AttentionVariant, shape: tuple[int, ...], causal: bool, kv_heads: int | None = None
) -> dict:
    """FLOPs of each pass: the variant's forward and backward counts, and their sum.

    A variant class without ``backward_flops`` (a plugin written before it) counts its backward
    as twice its forward, the base class's default. ``kv_heads`` (grouped heads) is given to
    the counts that take it, only when set.
    """
    fwd = int(variant.flops(*shape, causal, **budget.grouped_kwargs(variant.flops, kv_heads)))
    backward = getattr(variant, "backward_flops", None)
    if callable(backward):
        bwd = int(backward(*shape, causal, **budget.grouped_kwargs(backward, kv_heads)))
    else:
        bwd = 2 * fwd
    return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}


def ref_rows(point: Point, backward: bool) -> int | None:
    """Query rows the float64 reference may cover at this point (``None``: all)."""
    work = accuracy.reference_flops(*shape_of(point), backward=backward)
    return accuracy.reference_rows(work, point.q_len, point.measure.reference_max_work)


def apply_budget(variant: AttentionVariant, point: Point, rows: dict, size: int) -> bool:
    """Mark the passes whose estimate exceeds the CPU memory budget ``over_budget``.

    Returns whether a backward pass fits (the gradient accuracy check runs only then).
    """
    m: MeasureConfig = point.measure
    limit = m.memory_budget_gb
    if torch.device(point.device).type != "cpu" or limit is None:
        return True
    shape = shape_of(point)

    def estimate(name: str) -> int:
        covered = ref_rows(point, backward=name != "fwd") if m.accuracy else None
        grouped = grouped_heads(point)
        return budget.estimate_bytes(variant, shape, point.causal, size, name, m, covered, grouped)

    for name, row in rows.items():
        row["memory_budget_bytes"] = int(limit * 1e9)
        if row["status"] is None and (needed := estimate(name)) > limit * 1e9:
            model = row["analytic_mem_bytes"]
            row.update(
                status="over_budget",
                reason=budget.over_budget_reason(name, needed, model, limit),
            )
    return estimate("fwd_bwd") <= limit * 1e9


def measure_pass(name: str, fn: Callable[[], Any], row: dict, device: str, m: MeasureConfig):
    """Time pass ``name`` (the call ``fn``) and measure its peak memory into ``row``.

    Raises:
        NonFinite: The pass's first call gave NaN or Inf.
    """
    if not finite(fn()):  # the pass's own warm-up call doubles as the NaN/Inf check
        raise NonFinite(f"{name}: output or gradients contain NaN/Inf")
    on_cuda = torch.device(device).type == "cuda"
    if m.timing:
        flush = bool(m.flush_l2) and on_cuda
        row.update(timing.time_callable(fn, device, m.min_run_time, flush_l2=flush))
        row["l2_flushed"] = flush if on_cuda else None
        row["tflops"] = row["flops"] / (row["time_ms"] * 1e-3) / 1e12
    if m.memory:
        mem = memory.peak_memory(fn, device)
        row["peak_mem_bytes"] = mem["peak_mem_bytes"]
        note = f"peak memory method: {mem['method']}"
        row["notes"] = f"{row['notes']}; {note}" if row.get("notes") else note
        if mem["method"] == "profiler" and memory.rss_available():
            # The RSS figure is a side note: a kernel that races the high-water-mark reset
            # loses the note, never the row.
            try:
                rss = memory.peak_memory(fn, device, method="rss")["peak_mem_bytes"]
                row["notes"] += f"; resident-set peak {rss / 2**20:.1f} MiB"
            except OSError as exc:
                row["notes"] += f"; resident-set peak unavailable ({exc})"
    row["status"] = "ok"
