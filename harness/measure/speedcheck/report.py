"""The speed table as markdown: a summary per pass and variant, then one detail row per cell.

The header gives the facts that move the ratios: the load average and the copy bandwidth at
the start and at the end (docs/performance.md), the threads, the CPU (model, ISA flags, caches:
:mod:`.machine`) and, on CUDA, the GPU; the engine knobs the variants ran with follow the table.
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

import torch

import harness.measure.speedcheck.table as speed_table
from harness.measure import env
from harness.measure.speedcheck.machine import describe, tuned_section
from harness.measure.speedcheck.table import Cell, Table
from harness.measure.speedcheck.targets import PASSES, Targets


def _summary_cell(cell: Cell) -> str:
    if cell.note is not None or not cell.times:
        return "-"
    if cell.target is None:
        return f"{cell.ratio:.1f}x"
    mark = " ok" if cell.verdict == "PASS" else " **no**"
    return f"{cell.ratio:.1f}x (>= {cell.target:g}x{mark})"


def render_markdown(table: Table, command: str = "", header: str = "") -> str:
    """The summary table (one row per pass, one column per variant), then the detail rows."""
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
        "masking: median over rounds of the per-round ratio (target in brackets). `sdpa FLOPs "
        "/ FLOPs` is the speed-up the variant would have at sdpa's own rate (the ratio of the "
        "work each does; FLOPs of matmuls as `variants` counts them): a speed-up below it means "
        "the variant's kernels run below sdpa's rate, above it that they run faster.",
        "",
        "| pass | " + " | ".join(labels) + " |",
        "| --- |" + " ---: |" * len(labels),
    ]
    for pass_name, causal, row in done:
        cells = table.passes[(pass_name, causal)]
        lines.append(
            f"| {row} | " + " | ".join(_summary_cell(cells[lab]) for lab in labels) + " |"
        )
    lines += [
        "",
        "| pass | variant | time ms | sdpa ms | speed-up (min-max) | sdpa FLOPs / FLOPs "
        "| GFLOP/s | % of matmul | target | result |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for pass_name, causal, row in done:
        sdpa = table.sdpa[(pass_name, causal)]
        for cell in [sdpa, *table.passes[(pass_name, causal)].values()]:
            if cell.note is not None or not cell.times:
                lines.append(f"| {row} | {cell.label} | - | - | - | - | - | - | | {cell.note} |")
                continue
            gflops = cell.flops / (cell.time_ms * 1e-3) / 1e9
            lo, hi = cell.ratio_range
            target = f">= {cell.target:g}x" if cell.target is not None else ""
            work = f"{sdpa.flops / cell.flops:.2f}x" if cell.flops and sdpa.flops else "-"
            lines.append(
                f"| {row} | {cell.label} | {cell.time_ms:.1f} | {sdpa.time_ms:.1f} "
                f"| {cell.ratio:.2f}x ({lo:.2f}-{hi:.2f}) | {work} | {gflops:.1f} "
                f"| {100 * gflops / table.matmul_gflops:.0f}% | {target} | {cell.verdict} |"
            )
    lines += tuned_section(table)
    return "\n".join(lines) + "\n"


def header(device: str, start: tuple[float, float], end: tuple[float, float]) -> str:
    """The report's facts: date, torch, threads, CPU, load averages and copy bandwidths, GPU."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"{now}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{describe()}load average {start[0]:.1f} at the start, "
        f"{end[0]:.1f} at the end; copy bandwidth {start[1]:.1f} GB/s at the start, "
        f"{end[1]:.1f} at the end; "
    )
    if torch.device(device).type == "cuda":
        facts = env.gpu_facts(device)
        text += (
            f"GPU {torch.cuda.get_device_name(device)}, driver {facts['gpu_driver']}, SM clock "
            f"{facts['gpu_sm_clock_mhz']} of {facts['gpu_max_sm_clock_mhz']} MHz, CUDA "
            f"{torch.version.cuda}; each call timed with CUDA events after an L2 flush; "
        )
    return text


def speed_report(args: argparse.Namespace, targets: Targets, command: str) -> str:
    """Measure the table with the command-line options and render it.

    With ``--out`` the file is rewritten after every pass, so a run cut short keeps the passes
    it finished; the load and bandwidth probes run once per pass, and the report returned is
    the last pass's.
    """
    dtype = getattr(torch, args.dtype)
    device = env.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = os.getloadavg()[0], env.copy_bandwidth_gbs(device)
    rendered = [""]

    def render(table: Table) -> None:
        end = os.getloadavg()[0], env.copy_bandwidth_gbs(device)
        rendered[0] = render_markdown(table, command, header(device, start, end))
        if args.out:
            Path(args.out).write_text(rendered[0])

    speed_table.measure_table(
        args.seq_len, args.heads, args.head_dim, args.batch, device, dtype, args.rounds,
        speed_table.median_timer(device, args.min_run_time), targets.speed, on_pass=render,
    )  # fmt: skip
    return rendered[0]
