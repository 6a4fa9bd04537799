"""Helpers shared by test files: a tolerance check and a runner for the suite's commands."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 1800  # seconds per subprocess; a loaded 2-core machine is slow


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> None:
    """``torch.allclose`` with the largest difference in the message.

    Plain allclose: torch.testing.assert_close imports torch.distributed on first use (slow).
    """
    diff = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), f"max abs diff {diff:.3e}"


def run_python(
    args: Sequence[str],
    *,
    paths: Sequence[Path] = (),
    cwd: Path = REPO,
    env: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
    one_thread: bool = True,
) -> subprocess.CompletedProcess:
    """``python args...`` in ``cwd`` with ``paths`` in front of PYTHONPATH, output captured.

    A non-interactive matplotlib backend, and one torch thread unless ``one_thread`` is False
    (tiny tensors: threads only add contention); ``env`` adds or overrides variables.
    """
    full = dict(os.environ, MPLBACKEND="Agg", **(env or {}))
    if one_thread:
        full.setdefault("OMP_NUM_THREADS", "1")
    extra = [str(p) for p in paths] + ([full["PYTHONPATH"]] if full.get("PYTHONPATH") else [])
    if extra:
        full["PYTHONPATH"] = os.pathsep.join(extra)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=full, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
