"""Speed check: the efficient variants against exact ``sdpa`` in every pass, with targets.

``python -m harness.measure.speedcheck [--seq-len 8192 --heads 8 --head-dim 64 --batch 1
--device cpu --dtype float32 --rounds 3 --out FILE.md]`` times, in one process, four passes of
self-attention (q_len = kv_len = ``--seq-len``): the forward (``torch.no_grad``) and the
forward+backward (gradients of q, k, v and any trainable parameters), each bidirectional and
causal, for ``sdpa`` (exact, fused) and the variants of :data:`TABLE_VARIANTS` (issue 16:
longformer w=256, performer m=256, linear, linformer k=256). Every time is a median of
:func:`harness.measure.timing.time_callable` (the suite's one timer). The passes are measured in
``--rounds`` rounds, each timing ``sdpa`` and then every variant (the order reversed every other
round), so a variant's ratio in a round divides two times taken seconds apart; the table gives
the median over rounds of those per-round ratios (against ``sdpa`` in the same pass and masking:
causal against causal ``sdpa``, which skips the masked tiles), the median times, the analytic
FLOPs over the median time (forward: ``flops``; forward+backward: ``flops + backward_flops``)
and that rate as a share of the device's measured matmul rate
(:func:`harness.measure.env.matmul_tflops`). Targets are issue 16's (:data:`TARGETS`). A variant
that cannot run a pass (linformer is not causal) shows ``-`` with its reason. The header gives
the load average and the copy bandwidth (:func:`harness.measure.env.copy_bandwidth_gbs`) at the
start and the end: both move the ratios (docs/performance.md).

``--memory`` measures the peak memory of the forward of chunked longformer, linformer and
performer at lengths 1024..16384 and fits the log-log slope (target <= 1.15). Each point runs in
a fresh subprocess (large blocks served by mmap, so freed memory leaves the RSS) with
:func:`harness.measure.memory.peak_memory`'s ``rss`` method: ``VmHWM`` after the forward minus
``VmRSS`` before, the variant, inputs and a small warm-up call already in place.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import variants
from harness.measure import env, memory, timing
from harness.measure.factory import make_factory
from variants.base import AttentionVariant

#: (column label, registry name, params): the variants of issue 16's table.
TABLE_VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("longformer w=256", "longformer", {"window": 256}),
    ("performer m=256", "performer", {"nb_features": 256}),
    ("linear", "linear", {}),
    ("linformer k=256", "linformer", {"k": 256}),
]
#: (timing pass, causal, row label), in the table's order.
PASSES: list[tuple[str, bool, str]] = [
    ("fwd", False, "forward, bidirectional"),
    ("fwd", True, "forward, causal"),
    ("fwd_bwd", False, "forward+backward, bidirectional"),
    ("fwd_bwd", True, "forward+backward, causal"),
]
#: Issue 16's targets: minimum speed-up over sdpa per (pass, causal) and registry name.
TARGETS: dict[tuple[str, bool], dict[str, float]] = {
    ("fwd", False): {"longformer": 10.0, "performer": 8.0, "linformer": 16.0},
    ("fwd", True): {"longformer": 8.0, "performer": 4.0, "linear": 16.0},
    ("fwd_bwd", False): {"longformer": 7.0, "performer": 8.0},
    ("fwd_bwd", True): {"longformer": 6.0, "performer": 4.0},
}
MEMORY_POINTS: list[tuple[str, dict[str, Any]]] = [
    ("longformer", {"window": 256, "num_global": 0, "backend": "chunked"}),
    ("linformer", {"k": 256}),
    ("performer", {"nb_features": 256}),
]
MEMORY_LENGTHS = (1024, 2048, 4096, 8192, 16384)
SLOPE_TARGET = 1.15

#: ``timer(fn) -> milliseconds``: one median time of a zero-argument callable.
Timer = Callable[[Callable[[], Any]], float]


def build(name: str, params: dict[str, Any], kv_len: int, head_dim: int) -> AttentionVariant:
    """The registered variant ``name`` with ``params``, built for ``kv_len`` and ``head_dim``."""
    return make_factory(variants.get_class(name), params, kv_len, head_dim)(0)


@dataclass
class Cell:
    """One variant in one pass: per-round times (ms) of it and of sdpa, or why it did not run."""

    name: str
    label: str
    times: list[float] = field(default_factory=list)
    sdpa_times: list[float] = field(default_factory=list)
    flops: int = 0
    note: str | None = None

    @property
    def ratio(self) -> float:
        """Median over rounds of sdpa's time over the variant's, both from the same round."""
        return statistics.median(s / t for s, t in zip(self.sdpa_times, self.times))

    @property
    def ratio_range(self) -> tuple[float, float]:
        ratios = [s / t for s, t in zip(self.sdpa_times, self.times)]
        return min(ratios), max(ratios)

    @property
    def time_ms(self) -> float:
        return statistics.median(self.times)


@dataclass
class Table:
    """Everything the markdown report shows, per pass."""

    setup: dict[str, Any]
    passes: dict[tuple[str, bool], dict[str, Cell]]
    sdpa: dict[tuple[str, bool], Cell]
    matmul_gflops: float


def median_timer(device: str, min_run_time: float) -> Timer:
    """A :data:`Timer` built on :func:`harness.measure.timing.time_callable`.

    On CUDA every call is timed alone after an L2 flush (``flush_l2``), as the gpu presets do.
    """
    flush = torch.device(device).type == "cuda"

    def timer(fn: Callable[[], Any]) -> float:
        return float(timing.time_callable(fn, device, min_run_time, 1, flush_l2=flush)["time_ms"])

    return timer


def _pass_work(module: AttentionVariant, pass_name: str, shape: tuple, causal: bool) -> int:
    flops = module.flops(*shape, causal)
    return flops + module.backward_flops(*shape, causal) if pass_name == "fwd_bwd" else flops


def measure_table(
    seq_len: int, heads: int, head_dim: int, batch: int = 1, device: str = "cpu",
    dtype: torch.dtype = torch.float32, rounds: int = 3, timer: Timer | None = None,
    variant_list: list[tuple[str, str, dict[str, Any]]] | None = None,
    on_pass: Callable[[Table], Any] | None = None,
) -> Table:  # fmt: skip
    """Time sdpa and every variant in every pass of :data:`PASSES` (module docstring).

    Args:
        seq_len, heads, head_dim, batch: The self-attention shape.
        device, dtype: Where and in what the inputs live.
        rounds: Rounds per pass; each times sdpa, then every variant (reversed every other).
        timer: ``timer(fn) -> ms``; default :func:`median_timer` with 0.5 s per reading.
        variant_list: (label, name, params) triples; default :data:`TABLE_VARIANTS`.
        on_pass: Called with the table after each pass (the command line writes it out).
    """
    timer = timer or median_timer(device, 0.5)
    shape = (batch, heads, seq_len, seq_len, head_dim)
    gen = torch.Generator().manual_seed(0)
    q, k, v, grad = (
        torch.randn(batch, heads, seq_len, head_dim, generator=gen).to(device, dtype)
        for _ in range(4)
    )
    table = Table(
        setup={"shape": shape, "device": device, "dtype": str(dtype).replace("torch.", "")},
        passes={}, sdpa={}, matmul_gflops=env.matmul_tflops(device, dtype) * 1e3,
    )  # fmt: skip
    for pass_name, causal, _ in PASSES:
        cells, runs = {}, {}
        for label, name, params in [("sdpa", "sdpa", {}), *(variant_list or TABLE_VARIANTS)]:
            cell = cells[label] = Cell(name, label)
            try:
                module = build(name, params, seq_len, head_dim).to(device)
                reasons = module.not_supported_reasons(q, k, v, causal)
                if reasons:
                    cell.note = "; ".join(reasons)
                    continue
                module.setup(q, k, v, causal)  # one-time work (masks, compilation): untimed
                fn = timing.pass_callable(pass_name, module, q, k, v, causal, grad)
                fn()  # lazy state, allocator warm-up
                runs[label] = fn
                cell.flops = _pass_work(module, pass_name, shape, causal)
                if hasattr(module, "resolved_backend"):
                    cell.label += f" ({module.resolved_backend(q, k, v, causal)})"
            except Exception as exc:  # reported in the table, the run goes on
                cell.note = f"{type(exc).__name__}: {exc}"
                runs.pop(label, None)
        for r in range(rounds):
            order = [lab for lab in runs if lab != "sdpa"]
            sdpa_ms = timer(runs["sdpa"]) if "sdpa" in runs else float("nan")
            for label in order if r % 2 == 0 else order[::-1]:
                cells[label].times.append(timer(runs[label]))
                cells[label].sdpa_times.append(sdpa_ms)
            cells["sdpa"].times.append(sdpa_ms)
            cells["sdpa"].sdpa_times.append(sdpa_ms)
        table.sdpa[(pass_name, causal)] = cells.pop("sdpa")
        table.passes[(pass_name, causal)] = cells
        print(f"  {pass_name} causal={causal}: done", file=sys.stderr)
        if on_pass is not None:
            on_pass(table)
    return table


def _verdict(cell: Cell, target: float | None) -> str:
    if target is None:
        return ""
    return "PASS" if cell.ratio >= target else "FAIL"


def render_markdown(table: Table, command: str = "", header: str = "") -> str:
    """The summary table (issue 16's layout), then one row per pass and variant."""
    b, h, n, _, d = table.setup["shape"]
    labels = list(next(iter(table.passes.values())))
    done = [(p, c, row) for p, c, row in PASSES if (p, c) in table.passes]
    lines = [f"`{command}`", ""] if command else []
    if len(done) < len(PASSES):
        lines += [f"**Partial: {len(done)} of {len(PASSES)} passes measured so far.**", ""]
    lines += [
        f"{table.setup['dtype']}, batch {b}, heads {h}, q_len = kv_len {n}, head_dim {d}, "
        f"device {table.setup['device']}; {header}measured matmul rate "
        f"{table.matmul_gflops:.1f} GFLOP/s. Speed-up over `sdpa` in the same pass and "
        "masking: median over rounds of the per-round ratio (target in brackets).",
        "",
        "| pass | " + " | ".join(labels) + " |",
        "| --- |" + " ---: |" * len(labels),
    ]
    for pass_name, causal, row in done:
        cells, targets = table.passes[(pass_name, causal)], TARGETS[(pass_name, causal)]
        out = []
        for label in labels:
            cell, target = cells[label], targets.get(cells[label].name)
            if cell.note is not None or not cell.times:
                out.append("-")
                continue
            mark = {"PASS": " ok", "FAIL": " **no**", "": ""}[_verdict(cell, target)]
            out.append(f"{cell.ratio:.1f}x" + (f" (>= {target:g}x{mark})" if target else ""))
        lines.append(f"| {row} | " + " | ".join(out) + " |")
    lines += [
        "",
        "| pass | variant | time ms | sdpa ms | speed-up (min-max) | GFLOP/s | % of matmul "
        "| target | result |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for pass_name, causal, row in done:
        sdpa = table.sdpa[(pass_name, causal)]
        for cell in [sdpa, *table.passes[(pass_name, causal)].values()]:
            if cell.note is not None or not cell.times:
                lines.append(f"| {row} | {cell.label} | - | - | - | - | - | | {cell.note} |")
                continue
            target = TARGETS[(pass_name, causal)].get(cell.name)
            gflops = cell.flops / (cell.time_ms * 1e-3) / 1e9
            lo, hi = cell.ratio_range
            lines.append(
                f"| {row} | {cell.label} | {cell.time_ms:.1f} | {sdpa.time_ms:.1f} "
                f"| {cell.ratio:.2f}x ({lo:.2f}-{hi:.2f}) | {gflops:.1f} "
                f"| {100 * gflops / table.matmul_gflops:.0f}% "
                f"| {f'>= {target:g}x' if target else ''} | {_verdict(cell, target)} |"
            )
    return "\n".join(lines) + "\n"


def speed_report(args: argparse.Namespace, command: str) -> str:
    """Measure the table with the command-line options and render it; with ``--out``, the
    file is rewritten after every pass (a run cut short keeps the passes it finished)."""
    dtype = getattr(torch, args.dtype)
    device = env.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = os.getloadavg()[0], env.copy_bandwidth_gbs(device)

    rendered = [""]  # the last pass's report: the final one (the probes run once per pass)

    def render(table: Table) -> None:
        end = os.getloadavg()[0], env.copy_bandwidth_gbs(device)
        rendered[0] = render_markdown(table, command, _header(device, start, end))
        if args.out:
            Path(args.out).write_text(rendered[0])

    measure_table(
        args.seq_len, args.heads, args.head_dim, args.batch, device, dtype, args.rounds,
        median_timer(device, args.min_run_time), on_pass=render,
    )  # fmt: skip
    return rendered[0]


def _header(device: str, start: tuple, end: tuple) -> str:
    """The report's facts: date, torch, threads, CPU, load averages, the GPU's."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"{now}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{env.cpu_model()} ({os.cpu_count()} CPUs); load average {start[0]:.1f} at the start, "
        f"{end[0]:.1f} at the end; copy bandwidth {start[1]:.1f} GB/s at the start, "
        f"{end[1]:.1f} at the end; "
    )
    if torch.device(device).type == "cuda":
        facts = env.gpu_facts(device)
        header += (
            f"GPU {torch.cuda.get_device_name(device)}, driver {facts['gpu_driver']}, SM clock "
            f"{facts['gpu_sm_clock_mhz']} of {facts['gpu_max_sm_clock_mhz']} MHz, CUDA "
            f"{torch.version.cuda}; each call timed with CUDA events after an L2 flush; "
        )
    return header


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
        logs = np.log(ok).T if len(ok) > 1 else None  # (log n, log peak)
        slope = np.polyfit(logs[0], logs[1], 1)[0] if logs is not None else float("nan")
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
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"]
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per pass")
    parser.add_argument(
        "--min-run-time", type=float, default=0.5, help="seconds per reading (at least 1 call)"
    )
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
    given = sys.argv[1:] if argv is None else argv
    command = "python -m harness.measure.speedcheck " + " ".join(given)
    if args.memory:
        report = f"`{command.strip()}`\n\n{memory_report(args)}\n"
    else:
        report = speed_report(args, command.strip())
    print(report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
