"""The training-dynamics figures: learning curves at each arm's best learning rate and the
value against the learning rate (sensitivity), a panel per setting."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from harness.report.style import SkipFigure
from harness.tasks.train.report_data import curve_points
from harness.tasks.train.report_panels import label_panel, log_x, plan, save_panels


def plot_train_curves(rows: pd.DataFrame, path: str | Path, device: str) -> Figure:
    """Learning curves (the rows' ``curve``) at each arm's best learning rate, every seed."""
    fig, axes, styles, panels = plan(rows, "arm")
    drawn = 0
    for ax, (label, group, summary) in panels:
        label_panel(ax, label, group, "optimizer step")
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
    return save_panels(fig, axes, Path(path), "Learning curves", f"{device}; {note}")


def plot_train_lr(rows: pd.DataFrame, path: str | Path, device: str) -> Figure:
    """Value against learning rate per arm (mean over seeds, bars min–max): sensitivity."""
    fig, axes, styles, panels = plan(rows, "arm")
    for ax, (label, group, summary) in panels:
        label_panel(ax, label, group, "peak learning rate (log scale)")
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
        log_x(ax)
    note = "mean over seeds of the finished runs, bars min–max over seeds"
    return save_panels(fig, axes, Path(path), "Learning-rate sensitivity", f"{device}; {note}")
