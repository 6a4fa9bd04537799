"""The "Quality after training" text: per setting a table of every arm (mean and range over
seeds, convergence, the verdict against exact attention), the runs that did not finish, and the
"Which attention?" table (:mod:`harness.tasks.train.report_which`).

Terms (setting, arm, value, best learning rate) are :mod:`harness.tasks.train.report_data`'s.
Every function takes prepared rows of one device and returns markdown lines or data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from harness.report.markdown import fmt, markdown_table
from harness.tasks.train.report_data import (
    METRIC_NAMES,
    STATE_RULE,
    arm_summary,
    knob_key,
    not_finished,
    settings,
    train_frame,
)
from harness.tasks.train.report_which import TOLERANCE, verdicts, which_attention, which_markdown
from harness.tasks.train.state import RULE

__all__ = ["TOLERANCE", "setting_table", "train_markdown", "which_attention", "which_markdown"]

INTRO = (
    "Every variant trained inside the same tiny transformer on each setting (one row per "
    "variant, knob, learning rate and seed). The value is the evaluation after training "
    "(MQAR: eval accuracy on the fixed set, higher is better; chars: validation bits per "
    "character, lower is better). Each run stops when it converged (MQAR's target reached, or "
    "its curve flat: the setting's heading gives the rule) or at the cap (the cosine schedule "
    "ends there); a run stopped by the cap was still improving, and its value is a bound, not "
    "its level: such cells are marked †. Per arm the best learning rate is the one with the "
    "best mean over seeds among the rates where every run finished; the table gives its mean "
    "and [min–max] over seeds (n runs), how many of them converged, the verdict against exact "
    "attention (see Which attention?) and, for sensitivity, the min–max over every rate and "
    "seed (n runs). Steps to 90% are at the best rate (median over the runs that reached it). "
    "Time and peak memory are those of one training step (forward, backward, clipping, AdamW) "
    "at the best rate, as the training job measured them: the median of every step's wall "
    "time after the first three (batch generation and evaluation excluded). State: the knob "
    "read as keys or features, and the bytes of recurrent state of the whole model. "
    "Parameters: the whole model / its attention layers (+ the variant's own, where it has "
    "any). "
)


def _mean_range(r: Mapping[str, Any]) -> str:
    """``mean [min–max] (n=3)``, marked † when a seed was still improving at the cap."""
    core = fmt(r["value"])
    if r["value_min"] != r["value_max"]:
        core += f" [{fmt(r['value_min'])}–{fmt(r['value_max'])}]"
    return f"{core} (n={int(r['n_best'])})" + (" †" if r["not_converged"] else "")


def _converged(r: Mapping[str, Any]) -> str:
    runs, late = int(r["n_best"]), int(r["not_converged"])
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["stop_reasons"].items()))
    return f"{runs - late}/{runs}" + (f" ({reasons})" if reasons else "")


def _kib(value: float) -> str:
    return fmt(value / 1024) if np.isfinite(value) else "–"


def _steps_to_90(r: Mapping[str, Any]) -> str:
    reached, runs = int(r["reached_90"]), int(r["n_best"])
    if not reached:
        return "not reached"
    text = fmt(r["steps_to_90"])
    return text if reached == runs else f"{text} ({reached}/{runs} runs)"


def _params(r: Mapping[str, Any]) -> str:
    if not np.isfinite(r["n_params"]):
        return "–"
    text = f"{int(r['n_params']):,} / {int(r['n_attention_params']):,}"
    own = r["n_variant_params"]
    return text + (f" (+{int(own):,} own)" if np.isfinite(own) and own > 0 else "")


def knob_cell(knob: Any, value: Any) -> str:
    """``window=8``, or – for a variant without a knob."""
    if not isinstance(knob, str) or knob_key(value) is None:
        return "–"
    return f"{knob}={fmt(float(value))}"


def setting_table(summary: pd.DataFrame, tolerance: Mapping[str, float] | None = None) -> str:
    """One setting's arms (:func:`~harness.tasks.train.report_data.arm_summary`) as markdown."""
    metric = str(summary["metric"].iloc[0])
    accuracy = metric == "accuracy"
    tol = {**TOLERANCE, **(tolerance or {})}.get(metric, np.nan)
    verdict = verdicts(summary, tol)
    header = [
        "variant", "knob", "state size", "state (KiB)",
        f"{METRIC_NAMES.get(metric, metric)} at best lr", "converged (stop reasons)",
        "vs exact", "min–max over lrs × seeds", "best lr (of n rates)",
        *(["steps to 90%"] if accuracy else []), "ms / step", "MiB / step",
        "params (model / attention)", "runs ok",
    ]  # fmt: skip
    body = []
    for i, r in summary.iterrows():
        state = f"{fmt(r['state'])} {r['state_unit']}" if np.isfinite(r["state"]) else "–"
        body.append(
            [
                str(r["arm"]) + (" (exact)" if r["exact"] else ""),
                knob_cell(r["knob"], r["knob_value"]),
                state,
                _kib(r["state_bytes"]),
                _mean_range(r),
                _converged(r),
                verdict[i] or "–",
                f"{fmt(r['spread_min'])}–{fmt(r['spread_max'])} (n={int(r['n_all'])})",
                f"{r['best_lr']:g} (of {int(r['n_lrs'])})",
                *([_steps_to_90(r)] if accuracy else []),
                fmt(r["time_ms"]),
                fmt(r["peak_mem_bytes"] / 2**20),
                _params(r),
                f"{int(r['runs_ok'])}/{int(r['runs_total'])}",
            ]
        )
    return markdown_table(header, body)


def not_finished_markdown(rows: pd.DataFrame) -> str:
    """The runs of one setting that did not finish (unsupported, nan, error, ...), runs with the
    same outcome on one line; empty when every run finished. Listed here, never plotted."""
    bad = not_finished(rows)
    if not len(bad):
        return ""
    bad = bad.assign(
        knob_text=[knob_cell(k, v) for k, v in zip(bad["knob"], bad["knob_value"])],
        outcome=[
            str(s) + (f" at step {fmt(n)}" if s == "nan" else "")
            for s, n in zip(bad["status"], bad["nan_step"])
        ],
        why=[r if isinstance(r, str) else "(no reason recorded)" for r in bad["reason"]],
    )
    body = []
    for (arm, knob, outcome, why), group in bad.groupby(
        ["arm", "knob_text", "outcome", "why"], sort=False
    ):
        lrs = ", ".join(fmt(v) for v in sorted(group["lr"].dropna().unique()))
        seeds = ", ".join(fmt(v) for v in sorted(group["seed"].dropna().unique()))
        body.append([str(arm), knob, lrs or "–", seeds or "–", str(len(group)), outcome, why])
    header = ["variant", "knob", "lr", "seeds", "runs", "status", "reason"]
    return "Runs that did not finish (not plotted):\n\n" + markdown_table(header, body)


def _trivial_hold(group: pd.DataFrame, plateau: float) -> str:
    """The loop's rule for runs still on the plateau, where the rows record its margin."""
    if "trivial_margin" not in group:
        return ""
    margin = pd.to_numeric(group["trivial_margin"], errors="coerce").dropna()
    if not len(margin):
        return ""
    return (
        f"; a run whose best evaluation stays below {fmt(plateau + float(margin.max()))} is "
        "still on it and is not stopped as flat before the cap (runs have left it late)"
    )


def _levels(group: pd.DataFrame) -> str:
    """The setting's reference levels: MQAR's 1/pairs plateau and chance, chars' uniform bits."""
    chance = group["chance"].dropna()
    plateau = group["plateau"].dropna()
    parts = []
    if len(plateau):
        parts.append(
            f"Plateau 1/pairs = {fmt(float(plateau.iloc[0]))}: the accuracy of answering any "
            "value of the example, where a model sits that has not learnt which key a value "
            "belongs to" + _trivial_hold(group, float(plateau.iloc[0]))
        )
    if len(chance):
        accuracy = str(group["metric"].iloc[0]) == "accuracy"
        what = "chance over the vocabulary's values" if accuracy else "uniform over the alphabet"
        parts.append(f"{what}: {fmt(float(chance.iloc[0]))}")
    return ("; ".join(parts) + ".") if parts else ""


def train_markdown(
    df: pd.DataFrame, attention: pd.DataFrame, tolerance: Mapping[str, float] | None = None
) -> list[str]:
    """The section's text for one device's rows (figures are added by the report).

    Args:
        df: Rows of one device (training rows are picked out; none gives an empty list).
        attention: The same device's attention rows (for the Which-attention ratios).
        tolerance: Per metric, overrides of :data:`TOLERANCE`.
    """
    rows = train_frame(df)
    if not len(rows):
        return []
    tolerance = {**TOLERANCE, **(tolerance or {})}
    threads = sorted({fmt(t) for t in rows.get("threads", pd.Series(dtype=float)).dropna()})
    intro = INTRO + (f"Threads per training job: {', '.join(threads)}. " if threads else "")
    intro += (
        "Where a sweep ran several jobs at once, their times were measured on a shared "
        "machine: compare them within one report, and re-measure in one process to quote them."
    )
    md = [intro, "", f"Knobs as {STATE_RULE}. State in bytes: {RULE}.", ""]
    for label, group in settings(rows):
        summary = arm_summary(group)
        md += [f"#### {label}", "", _levels(group), ""]
        md += [setting_table(summary, tolerance), ""] if len(summary) else ["No run finished.", ""]
        if len(summary) and summary["not_converged"].any():
            late = summary.loc[summary["not_converged"] > 0, "arm"]
            md += [
                f"† Still improving at the cap in at least one seed: {', '.join(late)}. Its "
                "value is a bound (the accuracy it reached so far, the bits per char it came "
                "down to), not its level; it is never called worse on that.",
                "",
            ]
        failed = not_finished_markdown(group)
        md += [failed, ""] if failed else []
    entries = which_attention(rows, attention, tolerance)
    md += ["### Which attention?", "", which_markdown(entries, tolerance), ""]
    return md
