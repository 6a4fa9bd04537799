"""The environment a row was measured in, and the device's measured matmul rate.

:func:`matmul_tflops` is the suite's one matmul-rate probe (the rows' ``matmul_tflops`` and
``speedcheck``'s table both read it).

Nothing optional is imported here: the xformers version is read from the installed package's
metadata, so a broken or absent xformers never breaks a sweep.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from harness.measure.timing import time_callable
from variants.base import check_int

_REPO_DIR = Path(__file__).resolve().parent


def resolve_device(device: str) -> str:
    """``"auto"`` becomes ``"cuda"`` when a GPU is available, else ``"cpu"``; others unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def device_unavailable(device: str) -> str | None:
    """Why ``device`` cannot run here (a reason naming the ``device`` field), or ``None``."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        built = "built without CUDA" if torch.version.cuda is None else "no CUDA device visible"
        return (
            f"device={device}: torch {torch.__version__} cannot use CUDA here ({built}); "
            "use device=cpu or device=auto"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        return f"device={device}: only {torch.cuda.device_count()} CUDA device(s) here"
    return None


def set_threads(n: int | None) -> int:
    """Set torch's intra-op thread count (``None`` leaves it); return the count in force."""
    if n is not None:
        torch.set_num_threads(check_int(None, "measure.threads", n, low=1, error=ValueError))
    return torch.get_num_threads()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or ``platform``'s best guess)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """``HEAD`` of the checkout holding this package, ``+dirty`` if tracked files changed.

    ``None`` when the package is not in a git checkout (an installed wheel) or git is missing.
    """
    try:
        head = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head or None


def _git(*args: str) -> str:
    """Stripped stdout of ``git ARGS`` in this package's folder (raises if git fails)."""
    proc = subprocess.run(
        ["git", *args], cwd=_REPO_DIR, capture_output=True, text=True, timeout=10, check=True
    )
    return proc.stdout.strip()


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


#: nvidia-smi's fields for the rows' GPU columns, in order.
_SMI_FIELDS = ("driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem")
GPU_COLUMNS = ("gpu_driver", "gpu_sm_clock_mhz", "gpu_max_sm_clock_mhz", "gpu_mem_clock_mhz")


def gpu_facts(device: str) -> dict[str, Any]:
    """Driver and clocks of a CUDA device from ``nvidia-smi`` (the columns of GPU_COLUMNS).

    The clocks are read when the row is made (the SM clock moves with load and temperature);
    every value is ``None`` on the CPU or when ``nvidia-smi`` cannot be run.
    """
    facts: dict[str, Any] = dict.fromkeys(GPU_COLUMNS)
    dev = torch.device(device)
    if dev.type != "cuda":
        return facts
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    query = ["nvidia-smi", f"--id={index}", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(
            [*query, f"--query-gpu={','.join(_SMI_FIELDS)}"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return facts
    values = [v.strip() for v in out.strip().splitlines()[0].split(",")] if out.strip() else []
    for column, value in zip(GPU_COLUMNS, values, strict=False):
        if column == "gpu_driver":
            facts[column] = value
        else:
            with contextlib.suppress(ValueError):
                facts[column] = float(value)
    return facts


def environment(device: str) -> dict[str, Any]:
    """Environment columns of a row: versions, device, CPU, threads, commit, host, time.

    Args:
        device: The resolved device (``cpu``, ``cuda`` or ``cuda:N``).

    Returns:
        ``python`` (version; the real-model texts depend on it), ``platform`` (OS, kernel,
        machine and C library as :func:`platform.platform` reads them), ``torch``, ``cuda``
        (CUDA runtime version torch was built with, or ``None``),
        ``xformers`` (``None`` when not installed), ``device_name`` (GPU name or CPU model),
        ``cpu_model``, ``threads``, ``git_commit``, ``host``, ``time`` (ISO 8601, UTC) and,
        on CUDA, the driver and clocks of :func:`gpu_facts` (``None`` on the CPU).
    """
    dev = torch.device(device)
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "xformers": _package_version("xformers"),
        "device_name": device_name,
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **gpu_facts(device),
    }


def _matmul_size(device: str, dtype: torch.dtype) -> int:
    if torch.device(device).type == "cuda":
        return 8192
    # CPU half-precision GEMMs are far slower; a smaller matrix keeps the probe short.
    return 1024 if dtype in (torch.float16, torch.bfloat16) else 2048


@functools.cache
def _matmul_tflops(device: str, dtype: torch.dtype, threads: int) -> float:
    n = _matmul_size(device, dtype)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64).to(dtype).to(device)
    b = torch.randn(n, n, generator=gen, dtype=torch.float64).to(dtype).to(device)
    # Best of three medians: the rate is every row's yardstick for a whole run, so one burst of
    # load during a single probe must not set it (a lone 0.5 s probe once read 79 GFLOP/s on a
    # machine whose 2048^3 fp32 rate is 125-150 GFLOP/s, and every row of that sweep said so).
    best_ms = min(
        time_callable(lambda: torch.matmul(a, b), device, min_run_time=0.3)["time_ms"]
        for _ in range(3)
    )
    return 2 * n**3 / (best_ms * 1e-3) / 1e12


def matmul_tflops(device: str, dtype: torch.dtype | str) -> float:
    """The device's achieved dense matmul rate in TFLOP/s, measured once per process.

    A square ``n x n`` by ``n x n`` matmul (2048 on the CPU, 1024 for CPU half types, 8192 on
    CUDA) is timed like every other call (median over ``torch.utils.benchmark`` blocks) and
    counted as ``2 n^3`` FLOPs; the best of three such medians is kept. Cached per (device,
    dtype, thread count).

    Args:
        device: Resolved device.
        dtype: The dtype the points run in (or its name).
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return _matmul_tflops(str(device), dtype, torch.get_num_threads())


def matmul_tflops_bf16(device: str) -> float | None:
    """The bf16 matmul rate of a CUDA device (:func:`matmul_tflops`); ``None`` on the CPU.

    Every CUDA row carries it beside the rate in its own dtype, so fp32 and fp16 rows can be
    read against the tensor cores' bf16 peak of the same card.
    """
    return matmul_tflops(device, torch.bfloat16) if torch.device(device).type == "cuda" else None


def copy_bandwidth_gbs(device: str, megabytes: int = 256) -> float:
    """The memory bandwidth a copy gets on ``device`` now, in GB/s (bytes read and written).

    A ``megabytes`` fp32 buffer copied into another, timed like every call (median of a 0.2 s
    reading). Not cached: the speed check reads it at its start and after every pass, because on
    a shared machine the bandwidth the memory-bound variants get moves with the neighbours'
    load, which the machine's own load average does not show (docs/performance.md).
    """
    src = torch.ones(megabytes * 2**18, device=device)
    dst = torch.empty_like(src)
    ms = time_callable(lambda: dst.copy_(src), device, min_run_time=0.2)["time_ms"]
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9
