"""The attention task's per-device figures, drawn by :func:`plot_all`.

The figures live by family: :mod:`.figures_scaling` (time, memory, rate against length) and
:mod:`.figures_accuracy` (error, trade-off); :mod:`harness.report.style` keeps their look
consistent with the other tasks'. Each ``plot_*`` function takes the rows of one device, draws
one figure, saves it as PNG and returns the :class:`~matplotlib.figure.Figure` (so tests can
inspect its lines and collections); when the figure's data is absent it raises
:class:`~harness.report.style.SkipFigure` with the reason instead of drawing an empty picture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from harness.analysis.series import prepare
from harness.report.sections import FigureResult, draw_one
from harness.report.style import slug, style_map
from harness.tasks.attention.figures_accuracy import (
    plot_error,
    plot_error_vs_knob,
    plot_error_vs_temperature,
    plot_tradeoff,
)
from harness.tasks.attention.figures_scaling import plot_memory, plot_rate, plot_time

#: Names of the per-device figures of :func:`plot_all`, in report order.
FIGURES: tuple[str, ...] = (
    "time_fwd",
    "time_fwd_bwd",
    "memory_fwd",
    "memory_fwd_bwd",
    "error_vs_seq_len",
    "error_vs_temperature",
    "error_vs_knob",
    "tradeoff",
    "rate_fwd",
)


def plot_all(
    df: pd.DataFrame, out_dir: str | Path, only: Sequence[str] | None = None
) -> list[FigureResult]:
    """Every figure per device into ``out_dir``; returns what was drawn and what was skipped.

    File names are ``<figure>.png`` with one device and ``<figure>__<device slug>.png`` with
    several. Figures are closed after saving.

    Args:
        df: Attention rows (any number of devices).
        out_dir: Folder for the PNGs (created).
        only: Figure names to draw (default all of :data:`FIGURES`).
    """
    df = prepare(df)
    out_dir = Path(out_dir)
    styles = style_map(df)
    devices = sorted(df["device_key"].dropna().unique())
    makers: dict[str, Callable[[pd.DataFrame, Path], Figure]] = {
        "time_fwd": lambda d, p: plot_time(d, p, "fwd", styles),
        "time_fwd_bwd": lambda d, p: plot_time(d, p, "fwd_bwd", styles),
        "memory_fwd": lambda d, p: plot_memory(d, p, "fwd", styles),
        "memory_fwd_bwd": lambda d, p: plot_memory(d, p, "fwd_bwd", styles),
        "error_vs_seq_len": lambda d, p: plot_error(d, p, styles),
        "error_vs_temperature": lambda d, p: plot_error_vs_temperature(d, p, styles),
        "error_vs_knob": lambda d, p: plot_error_vs_knob(d, p, styles),
        "tradeoff": lambda d, p: plot_tradeoff(d, p, styles=styles),
        "rate_fwd": lambda d, p: plot_rate(d, p, "fwd", styles),
    }
    results = []
    for device in devices:
        rows = df[df["device_key"] == device]
        suffix = f"__{slug(device)}" if len(devices) > 1 else ""
        for name in FIGURES:
            if only is not None and name not in only:
                continue
            path = out_dir / f"{name}{suffix}.png"
            results.append(draw_one(name, device, path, partial(makers[name], rows, path)))
    return results
