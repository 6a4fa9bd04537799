"""The attention task's report section: scaling summary, divergences and figures per device."""

from __future__ import annotations

import pandas as pd

from harness.analysis import scaling
from harness.report.markdown import fmt
from harness.report.sections import figure_lines
from harness.report.style import CONTEXT_COLUMNS, inputs_label
from harness.tasks.attention.figures import plot_all
from harness.tasks.attention.markdown import (
    divergence_markdown,
    fitted_inputs_markdown,
    summary_markdown,
)
from harness.tasks.base import ReportContext

INTRO = (
    "Slopes describe the asymptote: the exponent p of a + b·nᵖ fitted to the median per "
    "length over every length measured (the constant a takes the fixed cost per call, which "
    "flattens short lengths), with its 95% profile-likelihood interval; a slope of 1 is "
    "linear, 2 quadratic. Where the residuals of that fit still curve, the series is marked "
    "'curved' and the slope is the log-log least-squares slope of the top four lengths (the "
    "range is named). With fewer than five lengths there is no interval. Crossovers are "
    "interpolated in log space (a point that did not fit in memory counts as slower); "
    "≤ n means smaller already at the first length both ran; – means never, or not measured. "
    "The reference length n_ref is the largest at which the most series ran. Errors compare "
    "with two baselines on the same inputs: outputting zeros (error 1) and uniform attention "
    "(the mean of V)."
)


def inputs_of_errors(rows: pd.DataFrame) -> str:
    """The inputs the errors of ``rows`` were measured on, labelled (several joined by '; ')."""
    err = rows[(rows["pass"] == "fwd") & (rows["status"] == "ok") & rows["rel_err"].notna()]
    pairs = err[["inputs", "inputs_params"]].astype(str).drop_duplicates().index
    labels = {inputs_label(err.loc[i, "inputs"], err.loc[i, "inputs_params"]) for i in pairs}
    return "; ".join(sorted(labels))


def own_operators(rows: pd.DataFrame) -> str:
    """A note naming the variants that are operators of their own (``approximates_softmax``
    false): they have no error against exact attention, only speed and memory here."""
    if "approximates_softmax" not in rows:
        return ""
    own = rows[rows["approximates_softmax"].eq(False)]["variant"].unique()
    if not len(own):
        return ""
    return (
        f"{', '.join(sorted(map(str, own)))}: not approximations of softmax attention but "
        "operators of their own (causal recurrences); they have no error against exact "
        "attention and appear in the speed and memory columns and figures only. Their quality "
        "is what training measures (the train section)."
    )


def summary_sections(table: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
    """One summary table per context (dtype, causal, shape) of one device."""
    if not len(table):
        return ["No attention points here: no scaling summary.", ""]
    md = []
    for ctx, ctx_table in table.groupby(list(CONTEXT_COLUMNS)):
        dtype, causal, batch, heads, head_dim = ctx
        ref = ctx_table["reference_kv_len"].iloc[0]
        md += [
            f"### Summary: {dtype}, {'causal' if causal else 'non-causal'}, batch "
            f"{batch}, {heads} heads, head_dim {head_dim}; n_ref = {fmt(ref)}",
            "",
            summary_markdown(ctx_table),
            "",
        ]
        name, params = ctx_table[["error_inputs", "error_inputs_params"]].iloc[0]
        if isinstance(name, str):
            md += [f"rel_err at n_ref on inputs {inputs_label(name, params)}.", ""]
    divergence = divergence_markdown(rows)
    if divergence:
        md += ["### Divergence of the effective attention matrix", "", divergence, ""]
    return md


def section(ctx: ReportContext) -> list[str]:
    """The attention rows' section: intro, then per device the summary and the figures."""
    rows = ctx.rows
    drawn = plot_all(rows, ctx.out, only=ctx.figures)
    table = scaling.summary_table(rows, ctx.options.get("reference_kv_len"))
    md = ["## Results", ""]
    inputs = inputs_of_errors(rows)
    if inputs:
        md += [f"Accuracy measured on inputs: {inputs}.", ""]
    own = own_operators(rows)
    if own:
        md += [own, ""]
    fitted = fitted_inputs_markdown(rows)
    if fitted:
        md += [fitted, ""]
    md += [INTRO, ""]
    devices = sorted(rows["device_key"].unique())
    for device in devices:
        md += [f"### {device}", ""] if len(devices) > 1 else []
        device_table = table[table["device_key"] == device] if len(table) else table
        md += summary_sections(device_table, rows[rows["device_key"] == device])
        md += ["### Figures", ""] + figure_lines(drawn, device, ctx.out)
    return md
