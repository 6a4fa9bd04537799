"""Drawing and saving figures: series as lines against the length, plain ticks, the legend
outside the axes. A figure whose data is absent raises :class:`SkipFigure` with the reason."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.analysis.series import per_kv_len
from harness.report.labels import Line, line_groups, multi_length, title
from harness.report.palette import Style, style_for

DPI = 110
#: Size (inches) of a one-panel figure.
FIGSIZE = (8.5, 5.2)


class SkipFigure(Exception):
    """A figure's data is absent; the message says what is missing."""


def draw_curve(ax: Any, curve: pd.Series, style: Style, label: str, scale: float = 1.0) -> None:
    """One series as a line with markers: ``curve`` maps x (its index) to y."""
    ax.plot(
        curve.index,
        curve.to_numpy(dtype=float) * scale,
        color=style.color,
        linestyle=style.linestyle,
        marker=style.marker,
        markersize=5,
        linewidth=1.6,
        label=label,
    )


def draw_series(
    ax: Any,
    lines: Sequence[Line],
    curve: Callable[[pd.DataFrame], pd.Series],
    styles: Mapping[str, Style],
    scale: float = 1.0,
) -> None:
    """Every line of ``lines`` in its series' style; ``curve(rows)`` gives its points."""
    for series, label, rows in lines:
        draw_curve(ax, curve(rows), style_for(styles, series), label, scale)


def per_length(metric: str) -> Callable[[pd.DataFrame], pd.Series]:
    """The curve of :func:`draw_series` that plots ``metric``'s median against kv_len."""
    return lambda rows: per_kv_len(rows, metric)


def series_vs_length(
    rows: pd.DataFrame,
    metric: str,
    styles: Mapping[str, Style],
    device: str,
    scale: float = 1.0,
    relabel: Callable[[list[Line]], list[Line]] | None = None,
) -> tuple[Figure, Any, str]:
    """A new figure with each series' median ``metric`` against kv_len (log2 axis).

    Returns:
        ``(figure, axes, note)``, the note naming series left out for having one length.

    Raises:
        SkipFigure: No series has ``metric`` at two or more lengths.
    """
    lines, omitted = multi_length(line_groups(rows), metric)
    if not lines:
        raise SkipFigure(f"no series with {metric} at two or more lengths on {device}")
    fig, ax = plt.subplots(figsize=FIGSIZE)
    draw_series(ax, relabel(lines) if relabel else lines, per_length(metric), styles, scale)
    ax.set_xscale("log", base=2)
    return fig, ax, omitted


def length_ticks(ax: Any, lengths: Sequence[float]) -> None:
    """Tick the measured lengths as plain integers: a reader wants 4096, not 10^3.6."""
    lengths = sorted({int(x) for x in lengths if np.isfinite(x)})
    if 1 < len(lengths) <= 12:
        ax.set_xticks(lengths)
        ax.set_xticklabels([str(n) for n in lengths])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def plain_ticks(ax: Any, values: Sequence[float]) -> None:
    """Tick the measured values of a log x axis as plain numbers (0.25, 1, 4, not 10^-0.6)."""
    values = sorted({float(v) for v in values})
    if 1 < len(values) <= 12:
        ax.set_xticks(values)
        ax.set_xticklabels([f"{v:g}" for v in values])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def finish(fig: Figure, ax: Any, path: str | Path, legend: bool = True) -> Figure:
    """Legend outside the axes (never over data), tight layout, save."""
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return fig


def label_and_save(
    fig: Figure,
    ax: Any,
    path: str | Path,
    labels: tuple[str, str],
    heading: str,
    rows: pd.DataFrame,
    device: str,
    note: str = "",
) -> Figure:
    """Axis labels ``(x, y)``, a light grid, the title of :func:`title`, then :func:`finish`."""
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.grid(True, alpha=0.25)
    title(ax, heading, rows, device, note)
    return finish(fig, ax, path)
