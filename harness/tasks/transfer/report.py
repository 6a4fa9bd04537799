"""The transfer task's report section: before / after fitting, beside untrained variants."""

from __future__ import annotations

from harness.report.sections import per_device
from harness.tasks.base import ReportContext
from harness.tasks.transfer.report_figures import plot_transfer
from harness.tasks.transfer.report_markdown import transfer_markdown


def section(ctx: ReportContext) -> list[str]:
    """Per device the before/after table and the cosine-vs-knob figure."""
    drawn = plot_transfer(ctx.all_rows, ctx.out, only=ctx.figures)
    return per_device(
        "Before / after transfer", "Transfer figures", transfer_markdown, ctx.rows, drawn,
        ctx.devices, ctx.out,
    )  # fmt: skip
