"""The decode section's per-device figures: step latency, state memory, achieved bandwidth.

Colours are the variants' (:func:`harness.report.style.color_for`); grouped heads
(``kv_heads < heads``) are dashed; a batch other than the first measured is drawn with squares.
Each ``plot_*`` draws one figure from the lines of one device (:func:`.report_data.decode_lines`),
saves it and returns it, or raises :class:`~harness.report.style.SkipFigure` with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.report.sections import FigureResult, draw_one
from harness.report.style import FIGSIZE, SkipFigure, color_for, finish, length_ticks, slug, title
from harness.tasks.decode.report_data import baselines, crossover, curve, decode_lines

#: Figure names, in report order.
FIGURES: tuple[str, ...] = ("decode_latency", "decode_state", "decode_bandwidth")
CONTEXT_LABEL = "context (tokens cached before the step, log scale)"


def _style(rows: pd.DataFrame, batches: list) -> dict:
    first = rows.iloc[0]
    grouped = first["kv_heads"] != first["heads"]
    marker = "o" if first["batch"] == batches[0] else "s"
    return {
        "color": color_for(str(first["variant"])),
        "linestyle": "--" if grouped else "-",
        "marker": marker,
        "markersize": 5,
        "linewidth": 1.6,
    }


def _lines(lines: pd.DataFrame, metric: str, device: str) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) of every line with ``metric`` at two or more contexts."""
    out = [(str(line), rows) for line, rows in lines.groupby("line", sort=True)]
    out = [(line, rows) for line, rows in out if len(curve(rows, metric)) >= 2]
    if not out:
        raise SkipFigure(f"no line with {metric} at two or more contexts on {device}")
    return out


def _axes(lines: pd.DataFrame) -> tuple[Figure, object]:
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.25)
    ax.set_xlabel(CONTEXT_LABEL)
    length_ticks(ax, lines["kv_len"].dropna().unique())
    return fig, ax


def plot_latency(lines: pd.DataFrame, path: Path, device: str) -> Figure:
    """Per-token step time against context, log-log, with each variant's crossover marked on
    its group's exact baseline (a star where the variant becomes faster)."""
    drawn = _lines(lines, "token_ms", device)
    batches = sorted(lines["batch"].unique())
    fig, ax = _axes(lines)
    for line, rows in drawn:
        points = curve(rows, "token_ms")
        ax.plot(points.index, points.to_numpy(), label=line, **_style(rows, batches))
    base = baselines(lines)
    marked = 0
    for (group, line), rows in lines.groupby(["group", "line"]):
        ref_line = base.get(str(group))
        if ref_line is None or line == ref_line:
            continue
        ref = curve(lines[(lines["group"] == group) & (lines["line"] == ref_line)], "token_ms")
        n, _ = crossover(curve(rows, "token_ms"), ref)
        if n is None or n <= ref.index.min():
            continue
        at = np.exp(np.interp(np.log(n), np.log(ref.index.to_numpy(float)), np.log(ref.values)))
        ax.plot(
            [n],
            [at],
            marker="*",
            markersize=13,
            linestyle="none",
            color=color_for(str(rows["variant"].iloc[0])),
            markeredgecolor="black",
        )
        marked += 1
    ax.set_ylabel("time per generated token (ms, log scale): the attention step alone")
    note = "★: where the variant becomes faster than the exact KV cache" if marked else ""
    title(ax, "Decode: per-token step time against context", lines, device, note)
    return finish(fig, ax, path)


def plot_state(lines: pd.DataFrame, path: Path, device: str) -> Figure:
    """State bytes against context: the variant's model (line) and the measured (crosses)."""
    drawn = _lines(lines, "state_bytes", device)
    batches = sorted(lines["batch"].unique())
    fig, ax = _axes(lines)
    for line, rows in drawn:
        style = _style(rows, batches)
        model = curve(rows, "state_bytes")
        ax.plot(model.index, model.to_numpy() / 2**20, label=line, **style)
        measured = curve(rows, "state_bytes_measured")
        ax.plot(
            measured.index,
            measured.to_numpy() / 2**20,
            linestyle="none",
            marker="x",
            color=style["color"],
            markersize=8,
        )
    ax.set_ylabel("decode state (MiB, log scale)")
    title(
        ax,
        "Decode: state memory against context",
        lines,
        device,
        "lines: the variant's model; ×: state.nbytes() measured",
    )
    return finish(fig, ax, path)


def plot_bandwidth(lines: pd.DataFrame, path: Path, device: str) -> Figure:
    """Bytes a step must read over its time, against the copy bandwidth measured with it."""
    drawn = _lines(lines, "achieved_gbs", device)
    batches = sorted(lines["batch"].unique())
    fig, ax = _axes(lines)
    for line, rows in drawn:
        points = curve(rows, "achieved_gbs")
        ax.plot(points.index, points.to_numpy(), label=line, **_style(rows, batches))
    copy = lines["copy_gbs"].dropna()
    if len(copy):
        ax.axhline(copy.median(), color="black", linewidth=1.2, label="copy bandwidth (median)")
        ax.axhspan(copy.min(), copy.max(), color="black", alpha=0.08, label="copy: min–max")
    ax.set_ylabel("achieved bandwidth (GB/s read, log scale)")
    title(
        ax,
        "Decode: bytes a step must read / step time",
        lines,
        device,
        "copy bandwidth counts bytes read and written",
    )
    return finish(fig, ax, path)


def plot_all(
    rows: pd.DataFrame, out_dir: str | Path, only: Sequence[str] | None = None
) -> list[FigureResult]:
    """Every figure per device into ``out_dir`` (``<figure>.png``, with a device suffix when
    there are several devices)."""
    out_dir = Path(out_dir)
    lines = decode_lines(rows)
    devices = sorted(rows["device_key"].dropna().unique())
    makers = {
        "decode_latency": plot_latency,
        "decode_state": plot_state,
        "decode_bandwidth": plot_bandwidth,
    }
    results = []
    for device in devices:
        mine = lines[lines["device_key"] == device]
        suffix = f"__{slug(device)}" if len(devices) > 1 else ""
        for name in FIGURES:
            if only is not None and name not in only:
                continue
            path = out_dir / f"{name}{suffix}.png"
            if not len(mine):
                results.append(FigureResult(name, device, skipped="no ok decode rows"))
                continue
            results.append(draw_one(name, device, path, partial(makers[name], mine, path, device)))
    return results
