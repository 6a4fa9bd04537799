"""The train task's report section: quality after training and "Which attention?"."""

from __future__ import annotations

from harness.report.sections import per_device, task_rows
from harness.tasks.base import ReportContext
from harness.tasks.train.report_figures import plot_train
from harness.tasks.train.report_markdown import train_markdown


def section(ctx: ReportContext) -> list[str]:
    """Per device the training tables (with the attention rows' speed) and figures."""
    attention = ctx.all_rows[task_rows(ctx.all_rows, "attention")]
    drawn = plot_train(ctx.rows, ctx.out, only=ctx.figures, attention=attention)

    def text(rows):
        device_speed = attention[attention["device_key"].isin(rows["device_key"].unique())]
        return train_markdown(rows, device_speed)

    return per_device(
        "Quality after training", "Training figures", text, ctx.rows, drawn, ctx.devices, ctx.out
    )
