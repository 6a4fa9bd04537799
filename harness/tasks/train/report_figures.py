"""Figures of the "Quality after training" section, drawn per device by :func:`plot_train`.

Each figure has one panel per setting (terms of :mod:`harness.tasks.train.report_data`) and plots
each arm's value at its best learning rate: against the knob read as state size, against the
untrained approximation error of the same variant and knob (accuracy rows in the same folders),
against time per training step; the learning curves at the best rate; and the value against
the learning rate (sensitivity). Runs that did not finish are never drawn (the section lists
them). Colours are the variants' colours of every other figure. A figure whose data is absent
raises :class:`~harness.report.style.SkipFigure` with the reason.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.analysis.series import prepare
from harness.report.sections import FigureResult, draw_one
from harness.report.style import DPI, SkipFigure, Style, natural_key, nth_style, slug
from harness.tasks.train.report_data import (
    METRIC_NAMES,
    STATE_RULE,
    arm_summary,
    curve_points,
    error_of,
    settings,
    train_frame,
    untrained_errors,
)
from harness.tasks.train.report_state import draw_state
from harness.tasks.train.state import RULE

#: Names of the training figures of :func:`plot_train`, in report order.
TRAIN_FIGURES: tuple[str, ...] = (
    "train_vs_knob",
    "train_vs_error",
    "train_vs_time",
    "train_curves",
    "train_lr",
    "train_state",
)
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


def _axis(ax: Any, label: str, group: pd.DataFrame, xlabel: str) -> None:
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


def _save(fig: Figure, axes: list[Any], path: Path, heading: str, sub: str) -> Figure:
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


def _log_x(ax: Any, base: float = 10) -> None:
    """A log x axis ticked in plain numbers (8, 32, 0.003; not 2^3 or 3x10^-3)."""
    ax.set_xscale("log", base=base)
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    if base == 10:  # a panel often spans less than a decade: label 2x and 5x too
        ax.xaxis.set_minor_locator(matplotlib.ticker.LogLocator(10, subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(plain)


def _exact_level(ax: Any, value: float, style: Style, label: str) -> None:
    """Exact attention as a dashed level across the panel."""
    ax.axhline(value, color=style.color, linestyle="--", linewidth=1.2, label=label)


def _point(ax: Any, x: float, y: float, style: Style, label: str, **kw: Any) -> None:
    ax.plot([x], [y], linestyle="none", marker=style.marker, color=style.color, label=label, **kw)


def _plan(rows: pd.DataFrame, column: str) -> tuple[Figure, list[Any], dict[str, Style], list]:
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


def plot_train_vs_knob(rows: pd.DataFrame, path: str | Path, device: str) -> Figure:
    """Trained value against the knob read as state size (log2), a line per family; exact
    attention as a dashed level (and a point at n keys), knob values written at the points."""
    finished = rows[(rows["status"] == "ok") & rows["value"].notna()]
    if len(finished) and not finished["knob"].notna().any():
        raise SkipFigure("no trained variant with a knob (only variants without one finished)")
    fig, axes, styles, panels = _plan(rows, "family")
    no_knob: set[str] = set()
    for ax, (label, group, summary) in panels:
        _axis(ax, label, group, "state size (log scale; see note)")
        for i, (family, arms) in enumerate(summary.groupby("family", sort=True)):
            style = styles[family]
            if arms["exact"].any():
                for _, r in arms.iterrows():
                    _exact_level(ax, r["value"], style, f"{family} (exact: n keys)")
                    _point(ax, r["state"], r["value"], style, "_nolegend_")
                continue
            arms = arms[arms["state"].notna()].sort_values("state")
            if not len(arms):
                no_knob.add(str(family))
                continue
            unit = arms["state_unit"].iloc[0]
            ax.plot(
                arms["state"],
                arms["value"],
                color=style.color,
                linestyle=style.linestyle,
                marker=style.marker,
                label=f"{family} ({unit})",
            )
            for _, r in arms.iterrows():
                ax.annotate(
                    f"{r['knob']}={r['knob_value']:g}",
                    (r["state"], r["value"]),
                    fontsize=6.5,
                    xytext=(4, 4 if i % 2 else -10),  # families alternate: labels apart
                    textcoords="offset points",
                    color=style.color,
                )
        _log_x(ax, 2)
    note = STATE_RULE
    if no_knob:
        note += f"; without a knob, not drawn: {', '.join(sorted(no_knob))}"
    return _save(
        fig,
        axes,
        Path(path),
        "Trained quality against the knob (as state size)",
        f"{device}; {note}",
    )


def plot_train_vs_error(
    rows: pd.DataFrame, path: str | Path, device: str, attention: pd.DataFrame
) -> Figure:
    """Trained value against the untrained approximation error (rel_err) of the same variant,
    knob, length and causal flag, from the accuracy rows of the same device."""
    errors, inputs = untrained_errors(rows, attention)
    if not errors:
        raise SkipFigure(
            "no accuracy rows (rel_err) of these variants at the training lengths, knobs and "
            "causal flag on this device: run the accuracy experiment with the same settings"
        )
    fig, axes, styles, panels = _plan(rows, "arm")
    missing: set[str] = set()
    for ax, (label, group, summary) in panels:
        _axis(ax, label, group, "untrained relative error of the attention output (log scale)")
        n, causal = float(group["q_len"].iloc[0]), bool(group["causal"].iloc[0])
        for _, arm in summary.iterrows():
            if arm["exact"]:  # error ~ 0: a level, not a point squeezing the axis
                _exact_level(ax, arm["value"], styles[arm["arm"]], f"{arm['arm']} (exact)")
                continue
            err = error_of(errors, arm, n, causal)
            if not (np.isfinite(err) and err > 0):
                missing.add(str(arm["arm"]))
                continue
            _point(ax, err, arm["value"], styles[arm["arm"]], str(arm["arm"]), markersize=7)
        _log_x(ax)
    note = f"errors on inputs {inputs}, medians over seeds"
    if missing:
        note += f"; no accuracy row for {', '.join(sorted(missing, key=natural_key))}"
    heading = "Trained quality against untrained approximation error"
    return _save(fig, axes, Path(path), heading, f"{device}; {note}")


def plot_train_vs_time(rows: pd.DataFrame, path: str | Path, device: str) -> Figure:
    """Trained value against the time of one training step (log), one point per arm."""
    fig, axes, styles, panels = _plan(rows, "arm")
    for ax, (label, group, summary) in panels:
        _axis(ax, label, group, "time per training step (ms, log scale)")
        for _, arm in summary[summary["time_ms"].notna()].iterrows():
            _point(
                ax, arm["time_ms"], arm["value"], styles[arm["arm"]], str(arm["arm"]), markersize=7
            )
        _log_x(ax)
    note = "best learning rate per arm; median time of the timed steps of the training job"
    return _save(
        fig, axes, Path(path), "Trained quality against time per step", f"{device}; {note}"
    )


def plot_train_curves(rows: pd.DataFrame, path: str | Path, device: str) -> Figure:
    """Learning curves (the rows' ``curve``) at each arm's best learning rate, every seed."""
    fig, axes, styles, panels = _plan(rows, "arm")
    drawn = 0
    for ax, (label, group, summary) in panels:
        _axis(ax, label, group, "optimizer step")
        for _, arm in summary.iterrows():
            runs = group[(group["arm"] == arm["arm"]) & (group["lr"] == arm["best_lr"])]
            style = styles[arm["arm"]]
            for i, curve in enumerate(runs.loc[runs["status"] == "ok", "curve"]):
                steps, values = curve_points(curve)
                if not len(steps):
                    continue
                ax.plot(
                    steps,
                    values,
                    color=style.color,
                    linestyle=style.linestyle,
                    linewidth=1.2,
                    label=str(arm["arm"]) if i == 0 else "_nolegend_",
                    alpha=0.9,
                )
                drawn += 1
    if not drawn:
        raise SkipFigure("the rows carry no learning curve (column curve)")
    note = "each arm at its best learning rate, one line per seed"
    return _save(fig, axes, Path(path), "Learning curves", f"{device}; {note}")


def plot_train_lr(rows: pd.DataFrame, path: str | Path, device: str) -> Figure:
    """Value against learning rate per arm (mean over seeds, bars min–max): sensitivity."""
    fig, axes, styles, panels = _plan(rows, "arm")
    for ax, (label, group, summary) in panels:
        _axis(ax, label, group, "peak learning rate (log scale)")
        ok = group[(group["status"] == "ok") & group["value"].notna()]
        for arm in summary["arm"]:
            per_lr = ok[ok["arm"] == arm].groupby("lr")["value"].agg(["mean", "min", "max"])
            style = styles[arm]
            ax.errorbar(
                per_lr.index,
                per_lr["mean"],
                yerr=[per_lr["mean"] - per_lr["min"], per_lr["max"] - per_lr["mean"]],
                color=style.color,
                linestyle=style.linestyle,
                marker=style.marker,
                markersize=4,
                capsize=2,
                linewidth=1.2,
                label=arm,
            )
        _log_x(ax)
    note = "mean over seeds of the finished runs, bars min–max over seeds"
    return _save(fig, axes, Path(path), "Learning-rate sensitivity", f"{device}; {note}")


def plot_train_state(rows: pd.DataFrame, path: str | Path, device: str) -> Figure:
    """MQAR accuracy against bytes of recurrent state (Zoology's axis), a panel per setting: a
    line per family through its knob values, exact attention at its whole cache."""
    mqar = rows[rows["metric"] == "accuracy"]
    if not len(mqar):
        raise SkipFigure("no MQAR rows (the state-size axis is drawn for recall)")
    fig, axes, styles, panels = _plan(mqar, "family")
    missing: set[str] = set()
    for ax, (label, group, summary) in panels:
        _axis(ax, label, group, "bytes of recurrent state, whole model (log scale)")
        missing |= draw_state(ax, summary, styles)
    heading = "MQAR accuracy against the size of the recurrent state (Zoology's axis)"
    note = (
        f"{RULE}; mean over seeds at each arm's best learning rate, bars min–max over seeds; "
        "hollow: a seed still improving at the cap (a lower bound)"
    )
    if missing:
        note += f"; no state-size rule, not drawn: {', '.join(sorted(missing))}"
    return _save(fig, axes, Path(path), heading, f"{device}; {note}")


def plot_train(
    df: pd.DataFrame,
    out_dir: str | Path,
    only: Sequence[str] | None = None,
    attention: pd.DataFrame | None = None,
) -> list[FigureResult]:
    """Every training figure per device with training rows; what was drawn and skipped.

    File names are ``<figure>.png`` with one such device, ``<figure>__<device slug>.png`` with
    several. No training rows: nothing (an empty list).

    Args:
        df: Rows (the training rows are picked out).
        out_dir: Folder for the PNGs.
        only: Figure names to draw (default all of :data:`TRAIN_FIGURES`).
        attention: Attention rows, prepared (the untrained error of ``train_vs_error``).
    """
    rows = train_frame(prepare(df))
    if not len(rows):
        return []
    if attention is None:
        attention = rows.iloc[:0]
    out_dir = Path(out_dir)
    devices = sorted(rows["device_key"].dropna().unique())
    results = []
    for device in devices:
        mine = rows[rows["device_key"] == device]
        theirs = attention[attention["device_key"] == device]
        makers: dict[str, Callable[[pd.DataFrame, Path, str], Figure]] = {
            "train_vs_knob": plot_train_vs_knob,
            "train_vs_error": partial(plot_train_vs_error, attention=theirs),
            "train_vs_time": plot_train_vs_time,
            "train_curves": plot_train_curves,
            "train_lr": plot_train_lr,
            "train_state": plot_train_state,
        }
        suffix = f"__{slug(device)}" if len(devices) > 1 else ""
        for name in TRAIN_FIGURES:
            if only is not None and name not in only:
                continue
            path = out_dir / f"{name}{suffix}.png"
            results.append(draw_one(name, device, path, partial(makers[name], mine, path, device)))
    return results
