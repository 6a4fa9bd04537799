"""Test selection and fixtures shared by the whole suite.

Shared fixtures: ``one_thread``; ``sweep_rows`` (the rows of a synthetic sweep whose shape is
known) and ``check_png``, used by the report and figure tests.

The default run (``python -m pytest``, what CI and the README run) runs everything except the
pytest-benchmark suite. Slow tests carry the ``slow`` marker in their own file (end-to-end
subprocess runs of the Hydra app and launchers, the pretrained-model tests, figure rendering, the
measurement checks). Skip them while iterating with
``python -m pytest -m "not slow"`` (about 20 s).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from harness.analysis.rows import complete_row

# Engine knobs take their defaults in tests (variants.tuning), in subprocesses too; a test that
# tunes turns it on with its own cache folder and a fake timer (tests/test_tuning.py).
os.environ["ATTNBENCH_TUNING"] = "off"
os.environ["ATTNBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="attnbench-cache-")


def pytest_configure(config: pytest.Config) -> None:
    # scripts/gpu_run.sh selects these on the GPU machine with `-m cuda` (docs/gpu.md).
    config.addinivalue_line("markers", "cuda: needs a CUDA device (scripts/gpu_run.sh runs them)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_cuda = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if no_cuda and item.get_closest_marker("cuda"):
            item.add_marker(no_cuda)


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (deterministic, and fair on a shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------- report and figures: a synthetic sweep, PNGs
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KV_LENS = [256, 512, 1024, 2048, 4096, 8192, 16384]
DEFAULT_KNOB = {"local": 128, "linformer": 256, "performer": 256}
KNOB_NAME = {"local": "window", "linformer": "k", "performer": "nb_features"}
#: What the rows say of each variant: (exact, randomized).
FLAGS = {
    "full": (True, False),
    "sdpa": (True, False),
    "local": (False, False),
    "linformer": (False, True),
    "performer": (False, True),
}
DEVICES = {
    # device, device_name, host, speed factor, memory limit (bytes) for full attention
    "cpu": ("cpu", "Intel Xeon", "host-a", 1.0, 4 * 2**30),
    "cuda": ("cuda", "NVIDIA H100", "host-b", 0.02, 20 * 2**30),
}


def _synthetic_model(
    variant: str, n: int, knob: int | None, temperature: float
) -> dict[str, float]:
    """Time (ms), peak memory (bytes) and error of a variant at length n (known exponents)."""
    heads = 8
    if variant == "full":
        t, mem, err = 2e-7 * n**2, 4.0 * heads * n * n * 1.5, 1e-7
    elif variant == "sdpa":
        t, mem, err = 1.2e-7 * n**2, 4.0 * heads * n * n, 1.2e-7
    elif variant == "local":
        t, mem = 3e-4 * n * (2 * knob + 1) / 257, 4.0 * heads * n * (2 * knob + 1)
        err = 0.3 * math.sqrt(128 / knob) * temperature**0.5
    elif variant == "linformer":
        t, mem = 4e-5 * n * knob / 128 + 0.05, 4.0 * heads * n * knob * 2
        err = 0.4 * math.sqrt(64 / knob) * (n / 1024) ** 0.1 * temperature**0.7
    else:  # performer
        t, mem = 6e-5 * n * knob / 256 + 0.1, 4.0 * heads * n * knob * 3
        err = 0.15 * math.sqrt(256 / knob) * temperature**1.2
    return {"time_ms": t, "peak_mem_bytes": mem, "rel_err": err}


def synthetic_rows(devices: tuple[str, ...] = ("cpu", "cuda"), seed: int = 0) -> list[dict]:
    """Rows of a realistic sweep; times carry 2% noise.

    Five variants over kv_len 256..16384 on two devices, with out-of-memory points, a knob
    sweep and a temperature sweep at n = 4096, one unsupported and one error point. Rows carry
    what the report reads (``exact``, ``randomized``, ``knob``, ``knob_value``, ``params``).
    """
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    points = []  # (variant, knob, n, temperature)
    for variant in ("full", "sdpa", "local", "linformer", "performer"):
        knob = DEFAULT_KNOB.get(variant)
        points += [(variant, knob, n, 1.0) for n in KV_LENS]
        if knob:
            points += [(variant, k, 4096, 1.0) for k in (32, 64, 512) if k != knob]
        points += [(variant, knob, 4096, t) for t in (0.25, 0.5, 2.0, 4.0)]
    for dev in devices:
        device, name, host, speed, limit = DEVICES[dev]
        for variant, knob, n, temperature in points:
            params = {KNOB_NAME[variant]: knob} if knob else {}
            m = _synthetic_model(variant, n, knob, temperature)
            for pass_, factor in (("fwd", 1.0), ("bwd", 2.5), ("fwd_bwd", 3.5)):
                row = {
                    "run_id": "synthetic",
                    "experiment": "scaling",
                    "point_id": f"{variant}-{knob}-{n}-{temperature}",
                    "variant": variant,
                    "params": params,
                    "exact": FLAGS[variant][0],
                    "randomized": FLAGS[variant][1],
                    "knob": KNOB_NAME.get(variant),
                    "knob_value": knob,
                    "device": device,
                    "device_name": name,
                    "cpu_model": "Intel Xeon",
                    "host": host,
                    "dtype": "float32",
                    "threads": 2,
                    "batch": 1,
                    "heads": 8,
                    "q_len": n,
                    "kv_len": n,
                    "head_dim": 64,
                    "causal": False,
                    "inputs": "gaussian",
                    "inputs_params": {"temperature": temperature},
                    "seed": 0,
                    "pass": pass_,
                    "torch": "2.5.0",
                    "cuda": None,
                    "xformers": None,
                    "git_commit": "abc123",
                    "time": "2026-01-01T00:00:00",
                }
                mem = m["peak_mem_bytes"] * (1.0 if pass_ == "fwd" else 2.0)
                if variant in ("full", "sdpa") and mem > limit * (1 if variant == "full" else 4):
                    row.update(
                        status="oom",
                        reason=f"analytic estimate {mem / 2**30:.1f} GiB exceeds memory_budget_gb",
                    )
                else:
                    time_ms = m["time_ms"] * factor * speed * float(rng.lognormal(0, 0.02))
                    # Exact kernels reach a steady share of the matmul rate; the
                    # approximations' small matmuls only fill the machine as n grows.
                    share = 0.3 if variant in ("full", "sdpa") else 0.25 * n / (n + 2048)
                    row.update(
                        status="ok",
                        time_ms=time_ms,
                        peak_mem_bytes=mem,
                        matmul_tflops=1.5 / speed,
                        tflops=share * 1.5 / speed,
                        flops=share * 1.5e12 / speed * time_ms * 1e-3,
                    )
                    if pass_ == "fwd":
                        row["rel_err"] = m["rel_err"] * float(rng.lognormal(0, 0.03))
                rows.append(complete_row(row))
    # One unsupported and one error point, so reports have reasons to count.
    extra = dict(
        rows[0],
        variant="linformer",
        params={"k": 256},
        exact=False,
        randomized=True,
        knob="k",
        knob_value=256,
        point_id="unsup",
        time_ms=None,
        status="unsupported",
        reason="linformer: causal attention is not supported",
    )
    rows.append(complete_row(extra))
    rows.append(
        complete_row(dict(extra, point_id="err", status="error", reason="RuntimeError: boom"))
    )
    return rows


def assert_png(path: Path) -> None:
    """``path`` is a PNG of a real picture (more than 100 x 100 pixels, colour)."""
    import matplotlib.image

    assert path.exists()
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.fixture(scope="session")
def sweep_rows():
    """:func:`synthetic_rows`, the factory of a realistic sweep's rows."""
    return synthetic_rows


@pytest.fixture(scope="session")
def check_png():
    """:func:`assert_png`: the file is a PNG of a real picture."""
    return assert_png
