"""Peak memory of the forward against length, and its log-log slope (``--memory``).

Each point runs in a fresh subprocess (large blocks served by mmap, so freed memory leaves the
RSS) with :func:`harness.measure.memory.peak_memory`'s ``rss`` method: ``VmHWM`` after the
forward minus ``VmRSS`` before, the variant, inputs and a small warm-up call already in place.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import torch

from harness.measure import memory
from harness.measure.speedcheck.table import build
from harness.measure.speedcheck.targets import MemoryTargets


def memory_child(name: str, params: dict[str, Any], n: int, heads: int, head_dim: int) -> int:
    """Peak bytes above the baseline of one forward (run in a fresh process)."""
    module = build(name, params, n, head_dim)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, head_dim, generator=gen) for _ in range(3))
    module.tune(q, k, v, backward=False)  # engine knobs chosen before the peak is read
    with torch.no_grad():
        module(q[..., :256, :], k[..., :256, :], v[..., :256, :])  # load kernels, thread pools
        peak = memory.peak_memory(lambda: module(q, k, v), "cpu", method="rss")
    return peak["peak_mem_bytes"]


def _child_peak(name: str, params: dict[str, Any], n: int, heads: int, head_dim: int) -> int:
    """:func:`memory_child` in a fresh interpreter; raises with its last stderr line."""
    cmd = [
        sys.executable, "-m", "harness.measure.speedcheck", "--memory-child", name,
        json.dumps(params), str(n), "--heads", str(heads), "--head-dim", str(head_dim),
    ]  # fmt: skip
    child_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env)
    if proc.returncode != 0:
        raise RuntimeError(" ".join(proc.stderr.strip().splitlines()[-1:]))
    return int(proc.stdout.strip().splitlines()[-1])


def memory_report(targets: MemoryTargets, heads: int, head_dim: int) -> str:
    """Peak memory per variant and length in fresh subprocesses; log-log slopes and verdicts."""
    lengths = targets.lengths
    lines = [
        f"peak memory of the fp32 forward above baseline (batch 1, heads {heads}, "
        f"head_dim {head_dim}; VmHWM after clear_refs, fresh process per point)",
        "",
        "| variant | " + " | ".join(f"n={n}" for n in lengths) + " | log-log slope | "
        f"target <= {targets.max_slope:g} |",
        "| --- |" + " ---: |" * len(lengths) + " ---: | --- |",
    ]
    for entry in targets.variants:
        name, params = entry.variant, dict(entry.params)
        peaks: list[int | None] = []
        for n in lengths:
            try:
                peaks.append(_child_peak(name, params, n, heads, head_dim))
            except RuntimeError as exc:
                peaks.append(None)
                print(f"  {name} n={n}: {exc}", file=sys.stderr)
                continue
            print(f"  {name} n={n}: {peaks[-1] / 2**20:.1f} MiB", file=sys.stderr)
        ok = [(n, p) for n, p in zip(lengths, peaks) if p]
        logs = np.log(ok).T if len(ok) > 1 else None  # (log n, log peak)
        slope = np.polyfit(logs[0], logs[1], 1)[0] if logs is not None else float("nan")
        cells = " | ".join("-" if p is None else f"{p / 2**20:.1f} MiB" for p in peaks)
        verdict = "PASS" if slope <= targets.max_slope else "FAIL"
        lines.append(f"| {name} {json.dumps(params)} | {cells} | {slope:.3f} | {verdict} |")
    return "\n".join(lines)
