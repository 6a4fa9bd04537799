"""The panels of every training figure: one per setting, one shared legend, the title above.

:func:`plan` lays out a figure of one panel per setting (terms of
:mod:`harness.tasks.train.report_data`) with each arm's summary at its best learning rate;
:func:`label_panel` titles and labels a panel (with MQAR's plateau level); :func:`save_panels`
gathers the legend, writes the title and saves. Runs that did not finish are never drawn.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
from matplotlib.figure import Figure

from harness.report.style import DPI, SkipFigure, Style, natural_key, nth_style
from harness.tasks.train.report_data import METRIC_NAMES, arm_summary, settings

#: Panels per figure row.
COLUMNS = 3
#: Legend name of MQAR's trivial level.
PLATEAU_LABEL = "plateau 1/pairs (any value of the example)"


def _styles(rows: pd.DataFrame, column: str) -> dict[str, Style]:
    """Style per label of ``column`` (arm or family): variant colour, i-th line and marker."""
    styles = {}
    for variant, group in rows.groupby("variant", sort=True):
        for i, label in enumerate(sorted(group[column].unique(), key=natural_key)):
            styles[label] = nth_style(str(variant), i)
    return styles


def _panels(count: int) -> tuple[Figure, list[Any]]:
    cols = min(COLUMNS, count)
    nrows = math.ceil(count / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.0 * cols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


def label_panel(ax: Any, label: str, group: pd.DataFrame, xlabel: str) -> None:
    """Panel title (the setting), axis labels, grid and the chance level of accuracy panels."""
    metric = str(group["metric"].iloc[0])
    ax.set_title(textwrap.fill(label, 52), fontsize=7.5, loc="left")
    ax.set_xlabel(xlabel, fontsize=8)
    better = "higher" if metric == "accuracy" else "lower"
    ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} ({better} is better)", fontsize=8)
    ax.grid(True, alpha=0.25)
    plateau_line(ax, group)


def plateau_line(ax: Any, group: pd.DataFrame) -> None:
    """MQAR's 1/pairs plateau (any value of the example) as a dotted grey level, named."""
    plateau = group["plateau"].dropna() if "plateau" in group else group.iloc[:0]
    if str(group["metric"].iloc[0]) == "accuracy" and len(plateau):
        ax.axhline(
            float(plateau.iloc[0]), color="0.5", linestyle=":", linewidth=1.2, label=PLATEAU_LABEL
        )


def save_panels(fig: Figure, axes: list[Any], path: Path, heading: str, sub: str) -> Figure:
    """One legend for every panel (labels once, outside), the title, then save."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="upper left",
            bbox_to_anchor=(1.0, 0.98),
            fontsize=8,
            frameon=False,
        )
    width = max(60, min(120, int(fig.get_figwidth() * 13)))  # the note stays over the panels
    fig.suptitle(f"{heading}\n{textwrap.fill(sub, width)}", x=0.01, ha="left", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return fig


def log_x(ax: Any, base: float = 10) -> None:
    """A log x axis ticked in plain numbers (8, 32, 0.003; not 2^3 or 3x10^-3)."""
    ax.set_xscale("log", base=base)
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    if base == 10:  # a panel often spans less than a decade: label 2x and 5x too
        ax.xaxis.set_minor_locator(matplotlib.ticker.LogLocator(10, subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(plain)


def exact_level(ax: Any, value: float, style: Style, label: str) -> None:
    """Exact attention as a dashed level across the panel."""
    ax.axhline(value, color=style.color, linestyle="--", linewidth=1.2, label=label)


def point(ax: Any, x: float, y: float, style: Style, label: str, **kw: Any) -> None:
    """One marker at ``(x, y)`` in ``style``, no line."""
    ax.plot([x], [y], linestyle="none", marker=style.marker, color=style.color, label=label, **kw)


def plan(rows: pd.DataFrame, column: str) -> tuple[Figure, list[Any], dict[str, Style], list]:
    """A figure of one panel per setting: (figure, axes, styles by ``column``, [(axes,
    (label, rows, arm summary))])."""
    data = _summaries(rows)
    fig, axes = _panels(len(data))
    return fig, axes, _styles(rows, column), list(zip(axes, data))


def _summaries(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """(label, rows, arm summary) per setting with a finished run."""
    out = [(label, group, arm_summary(group)) for label, group in settings(rows)]
    out = [t for t in out if len(t[2])]
    if not out:
        raise SkipFigure("no training run finished")
    return out
