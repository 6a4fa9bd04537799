"""Speed and memory check of the efficient variants against exact ``sdpa`` (issue 3 targets).

``python -m harness.measure.speedcheck [--seq-len 8192 --heads 8 --head-dim 64 --batch 1 --out FILE.md]``
times, in one process and one run, the fp32 forward (``torch.no_grad``) of ``sdpa`` (exact) and
every efficient variant with ``torch.utils.benchmark.Timer.blocked_autorange`` (median and IQR
over blocks, at least ``--min-repeats`` blocks), and prints a markdown table: time, ratio
against ``sdpa``, achieved GFLOP/s from each variant's analytic ``flops`` and the machine's
measured fp32 matmul rate (a 4096^3 matmul timed the same way), with PASS/FAIL for the targets
(longformer >= 4x, performer >= 4x, linformer >= 10x faster than sdpa). A variant that does not
import (e.g. not written yet) is listed with the error instead of a time.

``--memory`` measures the peak memory of the forward of chunked longformer, linformer and
performer at seq_len 1024..16384 and fits the log-log slope (target <= 1.15). Each point runs in
a fresh subprocess (glibc told to serve large blocks by mmap, so freed memory leaves the RSS):
after the variant, the inputs and a small warm-up call exist, ``/proc/self/clear_refs`` ("5")
resets the high-water mark, and the peak is ``VmHWM`` after the forward minus ``VmRSS`` before.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from typing import Any

import numpy as np
import torch
from torch.utils.benchmark import Timer

import variants

#: (registry name, params, target speed-up over sdpa or None)
SPEED_POINTS: list[tuple[str, dict[str, Any], float | None]] = [
    ("longformer", {"window": 256, "num_global": 0, "backend": "auto"}, 4.0),
    ("longformer", {"window": 256, "num_global": 1, "backend": "auto"}, None),  # the default
    ("performer", {"nb_features": 256}, 4.0),
    ("linformer", {"k": 256}, 10.0),
    ("nystrom", {"num_landmarks": 64}, None),
    ("linear", {}, None),
    ("bigbird", {}, None),
]
MEMORY_POINTS: list[tuple[str, dict[str, Any]]] = [
    ("longformer", {"window": 256, "num_global": 0, "backend": "chunked"}),
    ("linformer", {"k": 256}),
    ("performer", {"nb_features": 256}),
]
MEMORY_LENGTHS = (1024, 2048, 4096, 8192, 16384)
SLOPE_TARGET = 1.15


def time_call(fn, min_run_time: float, min_repeats: int) -> tuple[float, float, int]:
    """Median and IQR (seconds per call) and the number of blocks timed."""
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    times = list(measurement.times)
    while len(times) < min_repeats:  # slow calls: time more blocks of the same size
        times.extend(timer.timeit(measurement.number_per_run).times)
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return statistics.median(times), q3 - q1, len(times)


def matmul_gflops(min_run_time: float, min_repeats: int, size: int = 4096) -> float:
    """Measured fp32 matmul rate of this machine in GFLOP/s."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    median, _, _ = time_call(lambda: a @ b, min_run_time, min_repeats)
    return 2 * size**3 / median / 1e9


def speed_table(args: argparse.Namespace) -> str:
    """Time every variant, return the markdown report."""
    b, h, n, d = args.batch, args.heads, args.seq_len, args.head_dim
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=gen) for _ in range(3))
    rows = []
    sdpa_ms = None
    for name, params, target in [("sdpa", {}, None)] + SPEED_POINTS:
        try:
            module = variants.create(name, seq_len=n, head_dim=d, **params)
            label = json.dumps(params) if params else "-"
            if hasattr(module, "resolved_backend"):
                label += f" (ran {module.resolved_backend(q, k, v)})"
            reasons = module.not_supported_reasons(q, k, v, False)
            if reasons:
                rows.append((name, label, None, None, None, None, target, "; ".join(reasons)))
                continue
            with torch.no_grad():
                fn = lambda m=module: m(q, k, v)  # noqa: E731
                fn()  # first call: lazy setup, allocator warm-up
                median, iqr, repeats = time_call(fn, args.min_run_time, args.min_repeats)
        except Exception as exc:  # noqa: BLE001 - reported in the table, the run goes on
            rows.append(
                (
                    name,
                    json.dumps(params),
                    None,
                    None,
                    None,
                    None,
                    target,
                    f"{type(exc).__name__}: {exc}",
                )
            )
            continue
        if name == "sdpa":
            sdpa_ms = median * 1e3
        gflops = module.flops(b, h, n, n, d, False) / median / 1e9
        rows.append((name, label, median * 1e3, iqr * 1e3, repeats, gflops, target, ""))
        print(f"  {name}: {median * 1e3:.1f} ms", file=sys.stderr)
    matmul = matmul_gflops(args.min_run_time, args.min_repeats)

    lines = [
        f"fp32 forward, batch {b}, heads {h}, seq_len {n}, head_dim {d}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or ''}"
        f" {os.cpu_count()} CPUs; measured fp32 matmul rate {matmul:.1f} GFLOP/s.",
        "",
        "| variant | params | time ms (median) | IQR ms | repeats | speed-up vs sdpa "
        "| GFLOP/s | % of matmul | target | result |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, label, ms, iqr, repeats, gflops, target, note in rows:
        tgt = f">= {target:g}x" if target else ""
        if ms is None:
            lines.append(f"| {name} | {label} | - | - | - | - | - | - | {tgt} | {note} |")
            continue
        ratio = sdpa_ms / ms if sdpa_ms else float("nan")
        verdict = ("PASS" if ratio >= target else "FAIL") if target else ""
        lines.append(
            f"| {name} | {label} | {ms:.1f} | {iqr:.1f} | {repeats} | {ratio:.2f}x | "
            f"{gflops:.1f} | {100 * gflops / matmul:.0f}% | {tgt} | {verdict} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------- memory mode
def _proc_status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(name: str, params: dict[str, Any], n: int, heads: int, head_dim: int) -> int:
    """Peak bytes above the baseline of one forward (run in a fresh process)."""
    module = variants.create(name, seq_len=n, head_dim=head_dim, **params)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, head_dim, generator=gen) for _ in range(3))
    with torch.no_grad():
        module(q[..., :256, :], k[..., :256, :], v[..., :256, :])  # load kernels, thread pools
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        baseline = _proc_status("VmRSS")
        out = module(q, k, v)
        peak = _proc_status("VmHWM")
    del out
    return peak - baseline


def memory_report(args: argparse.Namespace) -> str:
    """Peak memory per variant and length in fresh subprocesses; log-log slopes."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    lines = [
        f"peak memory of the fp32 forward above baseline (batch 1, heads {args.heads}, "
        f"head_dim {args.head_dim}; VmHWM after clear_refs, fresh process per point)",
        "",
        "| variant | " + " | ".join(f"n={n}" for n in MEMORY_LENGTHS) + " | log-log slope | "
        f"target <= {SLOPE_TARGET} |",
        "| --- |" + " ---: |" * len(MEMORY_LENGTHS) + " ---: | --- |",
    ]
    for name, params in MEMORY_POINTS:
        peaks = []
        for n in MEMORY_LENGTHS:
            cmd = [
                sys.executable,
                "-m",
                "harness.measure.speedcheck",
                "--memory-child",
                name,
                json.dumps(params),
                str(n),
                "--heads",
                str(args.heads),
                "--head-dim",
                str(args.head_dim),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                peaks.append(None)
                print(f"  {name} n={n}: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            peaks.append(int(proc.stdout.strip().splitlines()[-1]))
            print(f"  {name} n={n}: {peaks[-1] / 2**20:.1f} MiB", file=sys.stderr)
        ok = [(n, p) for n, p in zip(MEMORY_LENGTHS, peaks) if p]
        slope = (
            np.polyfit(np.log([n for n, _ in ok]), np.log([p for _, p in ok]), 1)[0]
            if len(ok) > 1
            else float("nan")
        )
        cells = " | ".join("-" if p is None else f"{p / 2**20:.1f} MiB" for p in peaks)
        verdict = "PASS" if slope <= SLOPE_TARGET else "FAIL"
        lines.append(f"| {name} {json.dumps(params)} | {cells} | {slope:.3f} | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds per variant")
    parser.add_argument("--min-repeats", type=int, default=5)
    parser.add_argument("--out", help="also write the markdown report to this file")
    parser.add_argument("--memory", action="store_true", help="peak-memory scaling instead")
    parser.add_argument(
        "--memory-child", nargs=3, metavar=("NAME", "PARAMS", "N"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.memory_child:
        name, params, n = args.memory_child
        print(memory_child(name, json.loads(params), int(n), args.heads, args.head_dim))
        return
    report = memory_report(args) if args.memory else speed_table(args)
    command = "python -m harness.measure.speedcheck " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    report = f"`{command.strip()}`\n\n{report}\n"
    print(report)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(report)


if __name__ == "__main__":
    main()
