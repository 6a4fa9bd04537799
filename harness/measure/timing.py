"""Wall time of forward, backward and forward+backward passes, with warm-up excluded.

All timing goes through ``torch.utils.benchmark.Timer``: on the CPU it runs with the process's
thread count, and on an accelerator its clock synchronises the device before every reading, so
CUDA time is never a host clock read mid-kernel. ``blocked_autorange`` first grows its block size
(that loop is the warm-up, never counted), then repeats blocks until ``min_run_time`` seconds
have been measured; when that gives fewer than ``min_repeats`` blocks (slow calls), more blocks
of the same size are timed. ``time_ms`` is the median time per call over the blocks,
``time_iqr_ms`` their interquartile range and ``repeats`` the number of blocks
(:func:`summarize`). This module is the suite's one timer: the harness, ``speedcheck`` and the
real-model experiment all time through it.

The passes (see :func:`pass_callable`):

* ``fwd``: the forward under ``torch.no_grad()`` (inference cost; no graph is saved).
* ``bwd``: the backward alone. The forward runs once outside the timed region and its graph is
  kept (``retain_graph=True``); the timed statement is ``torch.autograd.grad`` on that saved
  graph, so every repeat runs the same backward without re-running the forward.
* ``fwd_bwd``: forward with autograd plus ``torch.autograd.grad``, as in a training step.

Gradients are taken with respect to q, k, v and the variant's trainable parameters.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.benchmark import Timer

MIN_REPEATS = 5


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_callable(
    fn: Callable[[], Any],
    device: str | torch.device,
    min_run_time: float = 0.2,
    min_repeats: int = MIN_REPEATS,
) -> dict[str, float | int]:
    """Median wall time per call of ``fn`` with warm-up excluded.

    Args:
        fn: Zero-argument callable to time.
        device: Device the work runs on; CUDA is synchronised by the timer's clock.
        min_run_time: Seconds of measured time to collect (``blocked_autorange``).
        min_repeats: At least this many timed blocks, however long a call takes.

    Returns:
        ``time_ms`` (median per call), ``time_iqr_ms`` and ``repeats`` (timed blocks).
    """
    synchronize(device)
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    number = measurement.number_per_run
    times = list(measurement.times)  # seconds per call, one entry per block
    while len(times) < min_repeats:
        times.extend(timer.timeit(number).times)
    return summarize([t * 1e3 for t in times])


def summarize(times_ms: Sequence[float]) -> dict[str, float | int]:
    """``time_ms`` (median), ``time_iqr_ms`` (interquartile range) and ``repeats`` of timings.

    The one place a row's timing statistics are computed, whoever took the times.
    """
    times = list(times_ms)
    quartiles = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else None
    return {
        "time_ms": statistics.median(times),
        "time_iqr_ms": quartiles[2] - quartiles[0] if quartiles else 0.0,
        "repeats": len(times),
    }


def time_once_ms(fn: Callable[[], Any], device: str | torch.device) -> float:
    """Milliseconds of one call, device synchronised before and after (for one-time costs)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def grad_leaves(q: Tensor, k: Tensor, v: Tensor) -> list[Tensor]:
    """Fresh leaf copies of q, k, v requiring grad."""
    return [t.detach().clone().requires_grad_(True) for t in (q, k, v)]


def pass_callable(
    name: str,
    variant: torch.nn.Module,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool,
    grad_out: Tensor,
) -> Callable[[], Any]:
    """Zero-argument callable running pass ``name`` (``fwd``, ``bwd`` or ``fwd_bwd``).

    For ``bwd`` the forward graph is built here, once, outside any timing; the callable holds it
    (drop the callable to free it).
    """
    if name == "fwd":

        def fwd() -> Tensor:
            with torch.no_grad():
                return variant(q, k, v, causal=causal)

        return fwd
    if name not in ("bwd", "fwd_bwd"):
        raise ValueError(f"pass={name!r} is not one of fwd, bwd, fwd_bwd")
    leaves = grad_leaves(q, k, v)
    wrt = leaves + [p for p in variant.parameters() if p.requires_grad]
    if name == "bwd":
        saved_out = variant(*leaves, causal=causal)

        def bwd() -> tuple[Tensor, ...]:
            return torch.autograd.grad(saved_out, wrt, grad_out, retain_graph=True)

        return bwd

    def fwd_bwd() -> tuple[Tensor, ...]:
        out = variant(*leaves, causal=causal)
        return torch.autograd.grad(out, wrt, grad_out)

    return fwd_bwd
