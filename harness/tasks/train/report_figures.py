"""Figures of the "Quality after training" section, drawn per device by :func:`plot_train`.

Each figure has one panel per setting (:mod:`harness.tasks.train.report_panels`) and plots
each arm's value at its best learning rate: against the knob read as state size, against the
untrained approximation error of the same variant and knob (accuracy rows in the same folders),
against time per training step, against bytes of recurrent state; the learning curves and the
learning-rate sensitivity are :mod:`harness.tasks.train.report_curves`'. Colours are the
variants' colours of every other figure. A figure whose data is absent raises
:class:`~harness.report.style.SkipFigure` with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.analysis.series import prepare
from harness.report.sections import FigureResult, draw_one
from harness.report.style import SkipFigure, natural_key, slug
from harness.tasks.train.report_curves import plot_train_curves, plot_train_lr
from harness.tasks.train.report_data import STATE_RULE, error_of, train_frame, untrained_errors
from harness.tasks.train.report_panels import (
    COLUMNS,
    PLATEAU_LABEL,
    exact_level,
    label_panel,
    log_x,
    plan,
    plateau_line,
    point,
    save_panels,
)
from harness.tasks.train.report_state import draw_state
from harness.tasks.train.state import RULE

__all__ = [
    "COLUMNS",
    "PLATEAU_LABEL",
    "TRAIN_FIGURES",
    "plateau_line",
    "plot_train",
    "plot_train_curves",
    "plot_train_lr",
    "plot_train_state",
    "plot_train_vs_error",
    "plot_train_vs_knob",
    "plot_train_vs_time",
]

#: Names of the training figures of :func:`plot_train`, in report order.
TRAIN_FIGURES: tuple[str, ...] = (
    "train_vs_knob",
    "train_vs_error",
    "train_vs_time",
    "train_curves",
    "train_lr",
    "train_state",
)


def plot_train_vs_knob(rows: pd.DataFrame, path: str | Path, device: str) -> Figure:
    """Trained value against the knob read as state size (log2), a line per family; exact
    attention as a dashed level (and a point at n keys), knob values written at the points."""
    finished = rows[(rows["status"] == "ok") & rows["value"].notna()]
    if len(finished) and not finished["knob"].notna().any():
        raise SkipFigure("no trained variant with a knob (only variants without one finished)")
    fig, axes, styles, panels = plan(rows, "family")
    no_knob: set[str] = set()
    for ax, (label, group, summary) in panels:
        label_panel(ax, label, group, "state size (log scale; see note)")
        for i, (family, arms) in enumerate(summary.groupby("family", sort=True)):
            style = styles[family]
            if arms["exact"].any():
                for _, r in arms.iterrows():
                    exact_level(ax, r["value"], style, f"{family} (exact: n keys)")
                    point(ax, r["state"], r["value"], style, "_nolegend_")
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
        log_x(ax, 2)
    note = STATE_RULE
    if no_knob:
        note += f"; without a knob, not drawn: {', '.join(sorted(no_knob))}"
    return save_panels(
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
    fig, axes, styles, panels = plan(rows, "arm")
    missing: set[str] = set()
    for ax, (label, group, summary) in panels:
        label_panel(
            ax, label, group, "untrained relative error of the attention output (log scale)"
        )
        n, causal = float(group["q_len"].iloc[0]), bool(group["causal"].iloc[0])
        for _, arm in summary.iterrows():
            if arm["exact"]:  # error ~ 0: a level, not a point squeezing the axis
                exact_level(ax, arm["value"], styles[arm["arm"]], f"{arm['arm']} (exact)")
                continue
            err = error_of(errors, arm, n, causal)
            if not (np.isfinite(err) and err > 0):
                missing.add(str(arm["arm"]))
                continue
            point(ax, err, arm["value"], styles[arm["arm"]], str(arm["arm"]), markersize=7)
        log_x(ax)
    note = f"errors on inputs {inputs}, medians over seeds"
    if missing:
        note += f"; no accuracy row for {', '.join(sorted(missing, key=natural_key))}"
    heading = "Trained quality against untrained approximation error"
    return save_panels(fig, axes, Path(path), heading, f"{device}; {note}")


def plot_train_vs_time(rows: pd.DataFrame, path: str | Path, device: str) -> Figure:
    """Trained value against the time of one training step (log), one point per arm."""
    fig, axes, styles, panels = plan(rows, "arm")
    for ax, (label, group, summary) in panels:
        label_panel(ax, label, group, "time per training step (ms, log scale)")
        for _, arm in summary[summary["time_ms"].notna()].iterrows():
            point(
                ax, arm["time_ms"], arm["value"], styles[arm["arm"]], str(arm["arm"]), markersize=7
            )
        log_x(ax)
    note = "best learning rate per arm; median time of the timed steps of the training job"
    return save_panels(
        fig, axes, Path(path), "Trained quality against time per step", f"{device}; {note}"
    )


def plot_train_state(rows: pd.DataFrame, path: str | Path, device: str) -> Figure:
    """MQAR accuracy against bytes of recurrent state (Zoology's axis), a panel per setting: a
    line per family through its knob values, exact attention at its whole cache."""
    mqar = rows[rows["metric"] == "accuracy"]
    if not len(mqar):
        raise SkipFigure("no MQAR rows (the state-size axis is drawn for recall)")
    fig, axes, styles, panels = plan(mqar, "family")
    missing: set[str] = set()
    for ax, (label, group, summary) in panels:
        label_panel(ax, label, group, "bytes of recurrent state, whole model (log scale)")
        missing |= draw_state(ax, summary, styles)
    heading = "MQAR accuracy against the size of the recurrent state (Zoology's axis)"
    note = (
        f"{RULE}; mean over seeds at each arm's best learning rate, bars min–max over seeds; "
        "hollow: a seed still improving at the cap (a lower bound)"
    )
    if missing:
        note += f"; no state-size rule, not drawn: {', '.join(sorted(missing))}"
    return save_panels(fig, axes, Path(path), heading, f"{device}; {note}")


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
