"""Speed and memory check of the efficient variants against exact ``sdpa``, with targets.

``python -m harness.measure.speedcheck [--seq-len 8192 --heads 8 --head-dim 64 --batch 1
--out FILE.md]`` times, in one process and one run, the fp32 forward (``torch.no_grad``) of
``sdpa`` (exact) and every efficient variant with :func:`harness.measure.timing.time_callable`
(median and IQR over ``torch.utils.benchmark`` blocks, at least ``--min-repeats`` blocks), and
prints a markdown table: time, ratio against ``sdpa``, achieved GFLOP/s from each variant's
analytic ``flops`` and the machine's measured fp32 matmul rate
(:func:`harness.measure.env.matmul_tflops`), with PASS/FAIL for the targets (longformer >= 4x,
performer >= 4x, linformer >= 10x faster than sdpa). A variant that cannot be built is listed
with the error instead of a time. Self-attention: q_len = kv_len = ``--seq-len``.

``--memory`` measures the peak memory of the forward of chunked longformer, linformer and
performer at lengths 1024..16384 and fits the log-log slope (target <= 1.15). Each point runs in
a fresh subprocess (glibc told to serve large blocks by mmap, so freed memory leaves the RSS)
with :func:`harness.measure.memory.peak_memory`'s ``rss`` method: after the variant, the inputs
and a small warm-up call exist, the high-water mark is reset, and the peak is ``VmHWM`` after the
forward minus ``VmRSS`` before.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from typing import Any

import numpy as np
import torch

import variants
from harness.measure import env, memory, timing
from harness.measure.factory import make_factory
from variants.base import AttentionVariant

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


def build(name: str, params: dict[str, Any], kv_len: int, head_dim: int) -> AttentionVariant:
    """The registered variant ``name`` with ``params``, built for ``kv_len`` and ``head_dim``."""
    return make_factory(variants.get_class(name), params, kv_len, head_dim)(0)


def _time_forward(module: AttentionVariant, q, k, v, args: argparse.Namespace) -> dict[str, Any]:
    """``time_ms``, ``time_iqr_ms``, ``repeats`` of the no-grad forward, or ``note`` (why not)."""
    reasons = module.not_supported_reasons(q, k, v, False)
    if reasons:
        return {"note": "; ".join(reasons)}
    with torch.no_grad():
        module(q, k, v)  # first call: lazy setup, allocator warm-up
        return timing.time_callable(
            lambda: module(q, k, v), "cpu", args.min_run_time, args.min_repeats
        )


def speed_table(args: argparse.Namespace) -> str:
    """Time every variant, return the markdown report."""
    b, h, n, d = args.batch, args.heads, args.seq_len, args.head_dim
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=gen) for _ in range(3))
    rows = []
    sdpa_ms = None
    for name, params, target in [("sdpa", {}, None), *SPEED_POINTS]:
        label = json.dumps(params) if params else "-"
        try:
            module = build(name, params, n, d)
            if hasattr(module, "resolved_backend"):
                label += f" (ran {module.resolved_backend(q, k, v)})"
            result = _time_forward(module, q, k, v, args)
        except Exception as exc:  # reported in the table, the run goes on
            result = {"note": f"{type(exc).__name__}: {exc}"}
        row = {"name": name, "label": label, "target": target, **result}
        if "time_ms" in row:
            row["gflops"] = module.flops(b, h, n, n, d, False) / (row["time_ms"] * 1e-3) / 1e9
            sdpa_ms = row["time_ms"] if name == "sdpa" else sdpa_ms
            print(f"  {name}: {row['time_ms']:.1f} ms", file=sys.stderr)
        rows.append(row)
    matmul = env.matmul_tflops("cpu", torch.float32) * 1e3  # GFLOP/s

    lines = [
        f"fp32 forward, batch {b}, heads {h}, q_len = kv_len {n}, head_dim {d}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or ''}"
        f" {os.cpu_count()} CPUs; measured fp32 matmul rate {matmul:.1f} GFLOP/s.",
        "",
        "| variant | params | time ms (median) | IQR ms | repeats | speed-up vs sdpa "
        "| GFLOP/s | % of matmul | target | result |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        target = row["target"]
        tgt = f">= {target:g}x" if target else ""
        if "time_ms" not in row:
            lines.append(f"| {row['name']} | {row['label']} | - | - | - | - | - | - | {tgt} "
                         f"| {row['note']} |")  # fmt: skip
            continue
        ratio = sdpa_ms / row["time_ms"] if sdpa_ms else float("nan")
        verdict = ("PASS" if ratio >= target else "FAIL") if target else ""
        lines.append(
            f"| {row['name']} | {row['label']} | {row['time_ms']:.1f} | {row['time_iqr_ms']:.1f} "
            f"| {row['repeats']} | {ratio:.2f}x | {row['gflops']:.1f} "
            f"| {100 * row['gflops'] / matmul:.0f}% | {tgt} | {verdict} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------- memory mode
def memory_child(name: str, params: dict[str, Any], n: int, heads: int, head_dim: int) -> int:
    """Peak bytes above the baseline of one forward (run in a fresh process)."""
    module = build(name, params, n, head_dim)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, head_dim, generator=gen) for _ in range(3))
    with torch.no_grad():
        module(q[..., :256, :], k[..., :256, :], v[..., :256, :])  # load kernels, thread pools
        peak = memory.peak_memory(lambda: module(q, k, v), "cpu", method="rss")
    return peak["peak_mem_bytes"]


def memory_report(args: argparse.Namespace) -> str:
    """Peak memory per variant and length in fresh subprocesses; log-log slopes."""
    child_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
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
            proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env)
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
