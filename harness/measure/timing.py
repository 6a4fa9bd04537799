"""Wall time of forward, backward and forward+backward passes, with warm-up excluded.

Every reading is taken with ``torch.utils.benchmark.timer``, the clock of its ``Timer``,
which synchronises the accelerator before it reads the time, so CUDA time is never a host clock
read mid-kernel. The loop is ``blocked_autorange``'s, with one difference: the warm-up happens
once. The block size grows (1, 10, 100, ... calls) until a block takes at least
``min_run_time / 1000`` seconds (and 10 ms); those calls are the warm-up and are never counted.
Then blocks of that size are timed until ``min_run_time`` seconds have been measured and at least
``min_repeats`` blocks were timed (``Timer.timeit`` per block would warm up again before every
block). ``time_ms`` is the median time per call over the blocks, ``time_iqr_ms`` their
interquartile range and ``repeats`` the number of blocks (:func:`summarize`). This module is the
suite's one timer: the harness, ``speedcheck`` and the real-model experiment all time through it.

The passes (see :func:`pass_callable`):

* ``fwd``: the forward under ``torch.no_grad()`` (inference cost; no graph is saved).
* ``bwd``: the backward alone. The forward runs once outside the timed region and its graph is
  kept (``retain_graph=True``); the timed statement is ``torch.autograd.grad`` on that saved
  graph, so every repeat runs the same backward without re-running the forward.
* ``fwd_bwd``: forward with autograd plus ``torch.autograd.grad``, as in a training step.

Gradients are taken with respect to q, k, v and the variant's trainable parameters.

**L2 flush (CUDA, ``flush_l2=True``).** Back-to-back calls find their inputs in the GPU's L2
cache (50 MiB on an H100), which flatters small problems: a kernel whose q, k and v fit in L2
reads them at cache speed on every repeat but the first, which no layer of a real model does.
With ``flush_l2`` each call is timed on its own with CUDA events, after a buffer of twice the
L2 size has been overwritten (the write is outside the events, so it is not counted); the
warm-up is the same. The ``gpu`` and ``gpu_smoke`` presets and ``speedcheck --device cuda``
flush; rows say so in ``l2_flushed``. On the CPU there is no flush (``l2_flushed`` is empty):
the CPU's caches are a few MiB and the benchmark's inputs are larger.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.benchmark import timer as clock

MIN_REPEATS = 5
#: Shortest timed block in seconds: ``blocked_autorange`` asks for timer overhead <= 1e-4 of a
#: block, and a clock reading (with an accelerator sync) costs about a microsecond.
MIN_BLOCK_S = 0.01


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_callable(
    fn: Callable[[], Any],
    device: str | torch.device,
    min_run_time: float = 0.2,
    min_repeats: int = MIN_REPEATS,
    flush_l2: bool = False,
) -> dict[str, float | int]:
    """Median wall time per call of ``fn`` with warm-up excluded (module docstring).

    Args:
        fn: Zero-argument callable to time.
        device: Device the work runs on; the clock synchronises the accelerator.
        min_run_time: Seconds of measured time to collect.
        min_repeats: At least this many timed blocks, however long a call takes.
        flush_l2: On CUDA, time each call alone with CUDA events after flushing the L2 cache
            (module docstring); ignored on the CPU.

    Returns:
        ``time_ms`` (median per call), ``time_iqr_ms`` and ``repeats`` (timed blocks, or
        timed calls with ``flush_l2``).
    """
    synchronize(device)
    number = _block_size(fn, min_run_time)
    if flush_l2 and torch.device(device).type == "cuda":
        return summarize(_time_flushed(fn, torch.device(device), min_run_time, min_repeats))
    times: list[float] = []  # seconds per call, one entry per block
    total = 0.0
    while total < min_run_time or len(times) < min_repeats:
        block = _time_block(fn, number)
        times.append(block / number)
        total += block
    return summarize([t * 1e3 for t in times])


def l2_flush_buffer(device: torch.device) -> Tensor:
    """A byte buffer twice the device's L2 size (at least 64 MiB when torch cannot say)."""
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 32 * 2**20
    return torch.empty(2 * l2, dtype=torch.uint8, device=device)


def _time_flushed(
    fn: Callable[[], Any], device: torch.device, min_run_time: float, min_repeats: int
) -> list[float]:
    """Milliseconds of single calls, each after an L2 flush, read with CUDA events."""
    flush = l2_flush_buffer(device)
    times: list[float] = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    while sum(times) < min_run_time * 1e3 or len(times) < min_repeats:
        flush.fill_(len(times) % 255)  # a write evicts the inputs from L2
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _time_block(fn: Callable[[], Any], number: int) -> float:
    """Seconds taken by ``number`` back-to-back calls of ``fn``.

    The garbage collector is paused while the block runs, as ``timeit`` (and so ``Timer``) does.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        for _ in range(number):
            fn()
        return clock() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def _block_size(fn: Callable[[], Any], min_run_time: float) -> int:
    """Calls per timed block; the calls made to find it are the (only) warm-up.

    As ``blocked_autorange``: grow 1, 10, 100, ... until a block takes ``min_run_time / 1000``
    and :data:`MIN_BLOCK_S` (the clock's own cost is then negligible), or longer than
    ``min_run_time``.
    """
    number = 1
    while True:
        taken = _time_block(fn, number)
        if taken >= max(min_run_time / 1000, MIN_BLOCK_S) or taken > min_run_time:
            return number
        if number * 10 > 2**31 - 1:
            return number
        number *= 10


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


def time_each(calls: Sequence[Callable[[], Any]], device: str | torch.device) -> list[float]:
    """Milliseconds of each of ``calls``, run in order, each read alone with the suite's clock.

    For calls that cannot repeat (a decode step grows its state): the device is synchronised
    around each call (the clock does it) and the garbage collector is paused, as in a timed
    block. The caller runs its own warm-up calls first; :func:`summarize` gives the median and
    IQR.
    """
    synchronize(device)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        times = []
        for call in calls:
            start = clock()
            call()
            times.append((clock() - start) * 1e3)
        return times
    finally:
        if gc_was_enabled:
            gc.enable()


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
