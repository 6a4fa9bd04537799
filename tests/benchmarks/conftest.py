"""Shared set-up of the pytest-benchmark suite (``pytest tests/benchmarks --benchmark-only``).

The device, dtype and lengths come from environment variables, because options added by a
conftest below the rootdir are not seen by a plain ``pytest`` run:

* ``ATTNBENCH_BENCH_DEVICE``: ``cpu`` or ``cuda`` (default: cuda when available).
* ``ATTNBENCH_BENCH_DTYPE``: ``float32``, ``float16``, ... (default float32 on CPU, float16 on
  CUDA).
* ``ATTNBENCH_BENCH_SEQ_LENS``: comma-separated lengths (default ``256,1024,4096``).

The machine info saved with every result (``--benchmark-json``, ``--benchmark-save``) is
extended with the torch version, the device and its name, so that a comparison between two
files says what each ran on.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import pytest
import torch


def _device() -> str:
    default = "cuda" if torch.cuda.is_available() else "cpu"
    return os.environ.get("ATTNBENCH_BENCH_DEVICE", default)


def _dtype() -> torch.dtype:
    default = "float16" if _device() == "cuda" else "float32"
    name = os.environ.get("ATTNBENCH_BENCH_DTYPE", default)
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise pytest.UsageError(f"ATTNBENCH_BENCH_DTYPE={name!r} is not a torch dtype")
    return dtype


def _seq_lens() -> list[int]:
    raw = os.environ.get("ATTNBENCH_BENCH_SEQ_LENS", "256,1024,4096")
    try:
        return [int(x) for x in raw.split(",") if x.strip()]
    except ValueError as exc:
        raise pytest.UsageError(f"ATTNBENCH_BENCH_SEQ_LENS={raw!r}: {exc}") from exc


@pytest.fixture(scope="session")
def bench_device() -> str:
    """The device the benchmarks run on (``ATTNBENCH_BENCH_DEVICE``)."""
    return _device()


@pytest.fixture(scope="session")
def bench_dtype() -> torch.dtype:
    """The input dtype of the benchmarks (``ATTNBENCH_BENCH_DTYPE``)."""
    return _dtype()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize a ``bench_seq_len`` argument over ``ATTNBENCH_BENCH_SEQ_LENS``."""
    if "bench_seq_len" in metafunc.fixturenames:
        metafunc.parametrize("bench_seq_len", _seq_lens(), ids=str)


def device_name(device: str, machine_info: dict[str, Any] | None = None) -> str:
    """The GPU's name, or the CPU model (from pytest-benchmark's cpu info when present)."""
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = (machine_info or {}).get("cpu") or {}
    return cpu.get("brand_raw") or platform.processor() or platform.machine()


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """pytest-benchmark hook: add torch, CUDA, device, device name and threads."""
    device = _device()
    machine_info["torch"] = torch.__version__
    machine_info["cuda"] = torch.version.cuda
    machine_info["device"] = device
    machine_info["device_name"] = device_name(device, machine_info)
    machine_info["dtype"] = str(_dtype()).replace("torch.", "")
    machine_info["torch_threads"] = torch.get_num_threads()
