"""The train task's report section: quality after training and "Which attention?"."""

from __future__ import annotations

from harness.report.figures import attention_rows
from harness.report.figures_train import plot_train
from harness.report.markdown_train import train_markdown
from harness.report.sections import per_device
from harness.tasks.base import ReportContext


def section(ctx: ReportContext) -> list[str]:
    """Per device the training tables (with the attention rows' speed) and figures."""
    drawn = plot_train(ctx.rows, ctx.out, only=ctx.figures)
    speed = attention_rows(ctx.all_rows)

    def text(rows):
        device_speed = speed[speed["device_key"].isin(rows["device_key"].unique())]
        return train_markdown(rows, device_speed)

    return per_device(
        "Quality after training", "Training figures", text, ctx.rows, drawn, ctx.devices, ctx.out
    )
