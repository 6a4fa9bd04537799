"""Peak memory of one call above the memory in use just before it: measured, never modelled.

Methods (the one used is returned as ``method`` and recorded in the row's notes):

* ``cuda``: ``torch.cuda.reset_peak_memory_stats`` then ``max_memory_allocated`` minus
  ``memory_allocated`` before the call (tensor memory of PyTorch's caching allocator).
* ``profiler`` (the CPU default): the running sum of PyTorch's allocation events from
  ``torch.profiler`` with ``profile_memory=True``; the peak of live tensor bytes, the CPU
  counterpart of ``max_memory_allocated``. It is exact and repeatable; it does not see memory
  allocated outside PyTorch's allocator (BLAS/oneDNN scratch, Python objects).
* ``rss`` (CPU, Linux): the kernel's high-water mark of the process's resident set. Before the
  call, ``gc.collect()`` and glibc's ``malloc_trim(0)`` hand freed heap pages back to the kernel
  (glibc otherwise reuses them without touching the RSS, which would hide allocations), then
  writing ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM`` to the current ``VmRSS``, which is
  the baseline. The peak is ``VmHWM`` after the call minus that baseline, so it counts every page
  the call touched, whoever allocated it (PyTorch, BLAS workspaces, Python objects). Granularity
  is one page; other threads of the process would be counted too (the harness runs none).
  Within one long-lived process it is not repeatable for allocations of a few MB: measured
  here, the same linformer call gave 10.2 MB and 18.6 MB on two consecutive measurements (the
  profiler: 10.2 MB both times), because heap pages that stay resident are reused without
  raising the RSS. The harness therefore records the profiler's figure as ``peak_mem_bytes``
  and the RSS peak in the row's notes; ``attnbench-speedcheck --memory`` measures RSS in a
  fresh process per point, where it is reliable.

This module is the one reader of ``/proc/self/status``.

Callers warm the callable up first (the harness has already run it while timing it), so one-time
costs such as loading libraries are not counted as the call's memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"
_libc: Any = None


def _malloc_trim() -> None:
    """Return glibc's free heap pages to the kernel (no-op without glibc)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


def _status_kb(*fields: str) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(_STATUS) as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in fields:
                out[key] = int(rest.split()[0])  # "VmHWM:   12345 kB"
    return out


def _reset_hwm() -> int:
    """Reset VmHWM to VmRSS; return the RSS in bytes. Raises OSError if the kernel refuses."""
    with open(_CLEAR_REFS, "w") as fh:
        fh.write("5")
    kb = _status_kb("VmHWM", "VmRSS")
    # A kernel that ignores "5" leaves the old, higher HWM: the method would be wrong.
    if kb["VmHWM"] > kb["VmRSS"] + 64:
        raise OSError("clear_refs did not reset VmHWM")
    return kb["VmRSS"] * 1024


def rss_available() -> bool:
    """Whether the ``rss`` method works in this process."""
    try:
        _reset_hwm()
    except (OSError, KeyError, ValueError):
        return False
    return True


def _prepare() -> None:
    gc.collect()
    _malloc_trim()


def _peak_rss(fn: Callable[[], Any]) -> int:
    _prepare()
    baseline = _reset_hwm()
    result = fn()
    peak = _status_kb("VmHWM")["VmHWM"] * 1024
    del result
    return max(0, peak - baseline)


def _peak_cuda(fn: Callable[[], Any]) -> int:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del result
    return max(0, peak - baseline)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: kineto prints two "USDT: profiler_start/stop" lines
    per profile on the C++ side (torch 2.13), one pair per measured pass, which buried the
    sweep's progress lines. The call itself already ran (timing) with stderr intact."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _peak_profiler(fn: Callable[[], Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    _prepare()
    with (
        _native_stderr_silenced(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        result = fn()
    del result
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    level = peak = 0
    for event in events:
        level += event.nbytes()
        peak = max(peak, level)
    return peak


def peak_memory(
    fn: Callable[[], Any], device: str | torch.device, method: str | None = None
) -> dict[str, Any]:
    """Peak bytes above the pre-call baseline while ``fn()`` runs (its result included).

    Args:
        fn: Zero-argument callable; its return value is kept alive until the peak is read.
        device: ``cuda`` uses the CUDA allocator's statistics; otherwise the CPU methods.
        method: Force ``rss`` or ``profiler`` on the CPU; default ``profiler``.

    Returns:
        ``peak_mem_bytes`` and ``method`` (``cuda``, ``rss`` or ``profiler``).
    """
    if torch.device(device).type == "cuda":
        return {"peak_mem_bytes": _peak_cuda(fn), "method": "cuda"}
    if method is None:
        method = "profiler"
    if method == "rss":
        return {"peak_mem_bytes": _peak_rss(fn), "method": "rss"}
    if method == "profiler":
        return {"peak_mem_bytes": _peak_profiler(fn), "method": "profiler"}
    raise ValueError(f"memory: method={method!r} is not one of rss, profiler")


def release(device: str | torch.device | None = None) -> None:
    """Free what can be freed after a point: garbage, glibc's free pages, CUDA's cache."""
    _prepare()
    if torch.cuda.is_available() and (device is None or str(device).startswith("cuda")):
        torch.cuda.empty_cache()
