"""Pieces every task's report section uses: figure links and one block per device."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from harness.report.figures import FigureResult


def task_rows(df: pd.DataFrame, name: str) -> pd.Series:
    """Which rows belong to task ``name`` (rows without a ``task`` are attention rows)."""
    if "task" not in df.columns:
        return pd.Series(name == "attention", index=df.index)
    return df["task"].fillna("attention").astype(str) == name


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
