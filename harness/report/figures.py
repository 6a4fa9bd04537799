"""Every per-device figure of the report, drawn by :func:`plot_all`.

The figures live by family: :mod:`harness.report.figures_scaling` (time, memory, rate against
length), :mod:`harness.report.figures_accuracy` (error, trade-off) and
:mod:`harness.report.figures_realmodel` (real-model fidelity; the heatmaps, which are not per
device, are drawn by the report itself); :mod:`harness.report.style` keeps their look
consistent. Each ``plot_*`` function takes the rows of one device, draws one figure, saves it
as PNG and returns the :class:`~matplotlib.figure.Figure` (so tests can inspect its lines and
collections); when the figure's data is absent it raises
:class:`~harness.report.style.SkipFigure` with the reason instead of drawing an empty picture.
Training rows (``task == "train"``) and transfer rows (``task == "transfer"``) are left out of
every figure here: their figures are :func:`harness.report.figures_train.plot_train`'s and
:func:`harness.report.figures_transfer.plot_transfer`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from harness.analysis.series import prepare
from harness.report.figures_accuracy import (
    plot_error,
    plot_error_vs_knob,
    plot_error_vs_temperature,
    plot_tradeoff,
)
from harness.report.figures_realmodel import plot_realmodel
from harness.report.figures_scaling import plot_memory, plot_rate, plot_time
from harness.report.markdown_transfer import is_transfer
from harness.report.style import SkipFigure, slug, style_map
from harness.report.train_data import is_train

log = logging.getLogger(__name__)

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
    "realmodel",
)


@dataclass
class FigureResult:
    """What :func:`plot_all` did for one figure: the PNG it wrote, or why it skipped it."""

    name: str
    device: str | None
    path: Path | None = None
    skipped: str | None = None


#: Row families that are not attention points: whole-model, training and transfer rows.
NOT_ATTENTION: tuple[str, ...] = ("realmodel", "train", "transfer")


def attention_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of attention points: without those of ``task`` realmodel, train or transfer."""
    if "task" not in df.columns:
        return df
    return df[~df["task"].astype(str).isin(NOT_ATTENTION)]


def draw_one(name: str, device: str, path: Path, make: Callable[[], Figure]) -> FigureResult:
    """Draw one figure with ``make()`` (closed once saved), or record why it was skipped."""
    try:
        fig = make()
    except SkipFigure as exc:
        log.info("figure %s skipped: %s", name, exc)
        return FigureResult(name, device, skipped=str(exc))
    plt.close(fig)
    return FigureResult(name, device, path=path)


def plot_all(
    df: pd.DataFrame, out_dir: str | Path, only: Sequence[str] | None = None
) -> list[FigureResult]:
    """Every figure per device into ``out_dir``; returns what was drawn and what was skipped.

    File names are ``<figure>.png`` with one device and ``<figure>__<device slug>.png`` with
    several. Figures are closed after saving.

    Args:
        df: Rows (any number of devices).
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
        "realmodel": lambda d, p: plot_realmodel(d, p, styles),
    }
    results = []
    for device in devices:
        rows = df[df["device_key"] == device]
        suffix = f"__{slug(device)}" if len(devices) > 1 else ""
        for name in FIGURES:
            if only is not None and name not in only:
                continue
            path = out_dir / f"{name}{suffix}.png"
            # real-model rows (whole-model time at fixed lengths) are not attention points;
            # training and transfer rows have their own figures (figures_train, _transfer)
            own = is_train(rows) | is_transfer(rows)
            subset = rows[~own] if name == "realmodel" else attention_rows(rows)
            if not len(subset):
                why = "no attention points (only real-model or training rows)"
                results.append(FigureResult(name, device, skipped=why))
                continue
            results.append(draw_one(name, device, path, partial(makers[name], subset, path)))
    return results
