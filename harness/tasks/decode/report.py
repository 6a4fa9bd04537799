"""The decode task's report section: per device the tables at the longest context and figures."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.report.markdown import fmt, markdown_table
from harness.report.sections import per_device
from harness.tasks.base import ReportContext
from harness.tasks.decode.report_data import decode_lines, grouped_effect, summary
from harness.tasks.decode.report_figures import plot_all

INTRO = (
    "Prefill a prompt of `context` tokens, then generate: each step feeds `q_tokens` new tokens "
    "to the variant's `step` against its state (a KV cache, a ring buffer or a running sum). "
    "Times are of the attention step alone (no projections, MLP or sampling): the median over "
    "the timed steps, per generated token. The exact baseline of each setting (kv_heads, "
    "batch, query tokens, dtype) is its fastest exact variant; speed-up = baseline time / "
    "variant time at the table's context; the crossover is the context from which the variant "
    "is faster (interpolated in log-log space; ≤ n: already at the first context, > n: not "
    "within the contexts measured). Slope: least squares of log time against log context over "
    "every context (0: flat, 1: linear). Achieved bandwidth = the bytes a step must read (the "
    "variant's model) / step time, beside the copy bandwidth measured at the same point (bytes "
    "read and written). Errors: the step outputs against exact causal attention in float64 on "
    "the same tokens, beside the variant's own causal forward (its prefill) at as many of the "
    "prompt's last rows. Grouped-query heads: the same series with fewer KV heads. The model "
    "columns time a whole stack of `variants.MultiHeadAttention` blocks with an MLP (random "
    "weights); the attention share is depth x the attention step / the model's step."
)


def _bytes(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{int(value)} B"


def _count(value: float) -> str:
    """A rate: whole numbers with thousands separators from 100 up."""
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:,.0f}" if value >= 100 else fmt(value)


def _heading(part: pd.DataFrame) -> str:
    """``float32, batch 1, 8 heads, 2 KV heads, head_dim 64, 1 query token(s) per step``."""
    r = part.iloc[0]
    return (
        f"{r['dtype']}, batch {r['batch']}, {r['heads']} heads, {r['kv_heads']} KV heads, "
        f"head_dim {r['head_dim']}, {r['q_tokens']} query token(s) per step"
    )


def _grouped_table(lines: pd.DataFrame) -> list[str]:
    effect = grouped_effect(lines)
    if not len(effect):
        return []
    rows = [
        [
            r["series"], f"{r['heads']} → {r['kv_heads']}", fmt(r["context"]),
            f"{r['state_ratio']:.2f}x", f"{r['step_speedup']:.2f}x",
        ]
        for _, r in effect.iterrows()
    ]  # fmt: skip
    header = ["series", "KV heads", "context", "state smaller by", "step faster by"]
    return ["#### Grouped-query heads", "", markdown_table(header, rows), ""]


#: Columns of the speed table and of the memory and error table.
SPEED = ("series", "context", "ms / token (IQR)", "tokens/s", "speed-up vs exact", "slope",
         "crossover", "prefill ms", "model tokens/s", "attention share")  # fmt: skip
MEMORY = ("series", "state (model / measured)", "step reads", "achieved GB/s (of copy)",
          "decode rel. err", "forward rel. err")  # fmt: skip


def _ratio(value: float, text: str) -> str:
    return text.format(value) if value is not None and np.isfinite(value) else "–"


def _speed_row(r: pd.Series) -> list[str]:
    speedup = "baseline" if r["line"] == r["baseline"] else _ratio(r["speedup"], "{:.1f}x")
    return [
        r["line"], fmt(r["context"]), f"{fmt(r['token_ms'])} ± {fmt(r['step_iqr_ms'])}",
        _count(r["tokens_per_s"]), speedup, _ratio(r["slope"], "{:.2f}"), r["crossover"],
        _count(r["prefill_ms"]), _count(r["model_tokens_per_s"]),
        _ratio(r["model_attention_share"], "{:.0%}"),
    ]  # fmt: skip


def _memory_row(r: pd.Series) -> list[str]:
    bandwidth = f"{fmt(r['achieved_gbs'])} ({_ratio(r['bandwidth_fraction'], '{:.0%}')} of "
    return [
        r["line"], f"{_bytes(r['state_bytes'])} / {_bytes(r['state_bytes_measured'])}",
        _bytes(r["step_read_bytes"]), bandwidth + f"{fmt(r['copy_gbs'])})",
        fmt(r["decode_rel_err"]), fmt(r["forward_rel_err"]),
    ]  # fmt: skip


def decode_markdown(rows: pd.DataFrame) -> list[str]:
    """The tables of one device: per setting, speed, then memory and error; then the effect of
    grouped heads."""
    lines = decode_lines(rows)
    if not len(lines):
        return []
    table = summary(lines)
    md = []
    for _, part in table.groupby("group", sort=False):
        part = part.sort_values(["exact", "line"], ascending=[False, True])  # exact first
        context = int(part["context"].max()) if part["context"].notna().any() else "–"
        md += [f"#### {_heading(part)}: at context {context}", ""]
        md += [markdown_table(SPEED, [_speed_row(r) for _, r in part.iterrows()]), ""]
        md += [markdown_table(MEMORY, [_memory_row(r) for _, r in part.iterrows()]), ""]
    return md + _grouped_table(lines)


def section(ctx: ReportContext) -> list[str]:
    """Intro, then per device the tables and the figures."""
    drawn = plot_all(ctx.rows, ctx.out, only=ctx.figures)

    def text(rows: pd.DataFrame) -> list[str]:
        tables = decode_markdown(rows)
        return [INTRO, ""] + tables if tables else []

    return per_device(
        "Decoding: prefill and per-token step",
        "Decode figures",
        text,
        ctx.rows,
        drawn,
        ctx.devices,
        ctx.out,
    )
