"""The realmodel task's report section: fidelity table, cosine figure and attention heatmaps."""

from __future__ import annotations

import logging
import os
from functools import partial

import pandas as pd

from harness.report.sections import FigureResult, draw_one, per_device
from harness.report.style import SkipFigure, slug, style_map
from harness.tasks.base import ReportContext
from harness.tasks.realmodel.report_figures import draw_heatmaps, plot_realmodel
from harness.tasks.realmodel.report_markdown import realmodel_markdown

log = logging.getLogger(__name__)

INTRO = (
    "Each variant swapped into every attention layer of the pretrained model, on the same pydoc "
    "texts. Retrieval: each paragraph's first half is a query, all second halves are "
    "candidates; top-1 is the fraction whose true half ranks first."
)


def _figures(ctx: ReportContext) -> list[FigureResult]:
    if ctx.figures is not None and "realmodel" not in ctx.figures:
        return []
    styles = style_map(ctx.rows)
    drawn = []
    for device in ctx.devices:
        rows = ctx.rows[ctx.rows["device_key"] == device]
        if not len(rows):
            continue
        suffix = f"__{slug(device)}" if len(ctx.devices) > 1 else ""
        path = ctx.out / f"realmodel{suffix}.png"
        drawn.append(
            draw_one("realmodel", device, path, partial(plot_realmodel, rows, path, styles))
        )
    return drawn


def heatmap_section(ctx: ReportContext) -> list[str]:
    """The heatmaps of every heatmap.json below the report's folders, or why there are none."""
    md = ["## Attention heatmaps (MiniLM)", ""]
    if not ctx.options.get("heatmap", True):
        return md + ["Not drawn (--no-heatmap).", ""]
    try:
        drawn = draw_heatmaps(ctx.folders, ctx.out)
    except SkipFigure as exc:
        log.info("heatmaps skipped: %s", exc)
        return md + [f"Not drawn: {exc}", ""]
    for path, group in drawn:
        md += [f"![heatmaps: {group.title}]({os.path.relpath(path, ctx.out)})", ""]
        left_out = [f"- {variant}: {reason}" for variant, reason in group.not_drawn().items()]
        if left_out:
            md += ["Left out of these heatmaps:", ""] + left_out + [""]
    return md


def _text(rows: pd.DataFrame) -> list[str]:
    table = realmodel_markdown(rows)
    return [INTRO, "", table, ""] if table else []


def section(ctx: ReportContext) -> list[str]:
    """Per device the fidelity table and the cosine figure; then the heatmaps."""
    title = "Real-model fidelity (all-MiniLM-L6-v2)"
    md = per_device(
        title, "Real-model figures", _text, ctx.rows, _figures(ctx), ctx.devices, ctx.out
    )
    return md + heatmap_section(ctx)
