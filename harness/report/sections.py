"""Pieces every task's report section uses: its rows, drawing a figure, figure links and one
block per device."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from harness.report.style import SkipFigure

log = logging.getLogger(__name__)


@dataclass
class FigureResult:
    """What drawing one figure did: the PNG it wrote, or why it skipped it."""

    name: str
    device: str | None
    path: Path | None = None
    skipped: str | None = None


def draw_one(name: str, device: str, path: Path, make: Callable[[], Figure]) -> FigureResult:
    """Draw one figure with ``make()`` (closed once saved), or record why it was skipped."""
    try:
        fig = make()
    except SkipFigure as exc:
        log.info("figure %s skipped: %s", name, exc)
        return FigureResult(name, device, skipped=str(exc))
    plt.close(fig)
    return FigureResult(name, device, path=path)


def task_rows(df: pd.DataFrame, name: str) -> pd.Series:
    """Which rows belong to task ``name`` (rows without a ``task`` are attention rows)."""
    if "task" not in df.columns:
        return pd.Series(name == "attention", index=df.index)
    return df["task"].fillna("attention").astype(str) == name


def attention_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of attention points (task ``attention``, or no task)."""
    return df[task_rows(df, "attention")]


def figure_lines(drawn: list[FigureResult], device: str, out: Path) -> list[str]:
    """The device's figures embedded, then those not drawn with the reason."""
    md, skipped = [], []
    for fig in drawn:
        if fig.device != device:
            continue
        if fig.path is not None:
            md += [f"![{fig.name}]({os.path.relpath(fig.path, out)})", ""]
        else:
            skipped.append(f"- {fig.name}: {fig.skipped}")
    if skipped:
        md += ["Figures not drawn:", ""] + skipped + [""]
    return md


def per_device(
    title: str,
    figures_title: str,
    make: Callable[[pd.DataFrame], list[str]],
    rows: pd.DataFrame,
    drawn: list[FigureResult],
    devices: list[str],
    out: Path,
) -> list[str]:
    """A section titled ``title`` with, per device whose rows ``make`` has text for, that text
    and the device's figures (under ``figures_title``); nothing when no device has text."""
    md = []
    for device in devices:
        text = make(rows[rows["device_key"] == device])
        if not text:
            continue
        md += [f"### {device}", ""] if len(devices) > 1 else []
        md += text + [f"### {figures_title}", ""] + figure_lines(drawn, device, out)
    return [f"## {title}", ""] + md if md else []
