"""The "Quality after training" text: per setting a table of every arm, the runs that did not
finish, and the "Which attention?" table.

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
    higher_is_better,
    knob_key,
    not_finished,
    settings,
    train_frame,
)

#: "Which attention?" tolerance per metric: a variant qualifies when its trained value is at
#: most this much worse than exact attention's (absolute: accuracy points, bits per char).
TOLERANCE: dict[str, float] = {"accuracy": 0.05, "bpc": 0.05}


def _attention_ratio(
    attention: pd.DataFrame, arm: Mapping[str, Any], ref: Mapping[str, Any], n: float, causal: bool
) -> tuple[float, float]:
    """(speed-up, memory ratio) of ``arm`` against ``ref`` from attention rows (fwd_bwd pass,
    kv_len = n, same causal flag); NaN where either lacks a row."""
    if not len(attention):
        return np.nan, np.nan
    rows = attention[
        (attention["pass"] == "fwd_bwd")
        & (attention["status"] == "ok")
        & (attention["kv_len"] == n)
        & (attention["causal"] == causal)
    ]

    def medians(a: Mapping[str, Any]) -> tuple[float, float]:
        key = knob_key(a["knob_value"])
        same = rows["knob_value"].map(lambda v: knob_key(v) == key)
        mine = rows[(rows["variant"] == a["variant"]) & same]
        if not len(mine):
            return np.nan, np.nan
        return float(mine["time_ms"].median()), float(mine["peak_mem_bytes"].median())

    (t_arm, m_arm), (t_ref, m_ref) = medians(arm), medians(ref)
    return t_ref / t_arm, m_arm / m_ref


def which_attention(
    rows: pd.DataFrame, attention: pd.DataFrame, tolerance: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """Per setting: the fastest arm whose trained value is within tolerance of exact attention.

    Exact attention's value is the best of its exact arms (``exact`` true: sdpa, full); its
    time and memory per step those of the fastest exact arm. Among the arms within tolerance
    (exact ones included, so the answer may be exact attention itself) the one with the
    smallest training time per step wins. Speed-up = exact time / its time, memory ratio = its
    peak memory / exact's, from the training rows; ``attn_speedup`` / ``attn_mem_ratio`` the
    same from the attention rows (pass fwd_bwd at kv_len = n, same causal flag) where both have
    one.

    Returns:
        One dict per setting: ``task``, ``n``, ``setting``, ``metric``, ``tolerance``,
        ``exact_arm``, ``exact_value``, ``arm``, ``value``, ``speedup``, ``mem_ratio``,
        ``attn_speedup``, ``attn_mem_ratio``, ``qualified`` (arms within tolerance), ``arms``
        and ``note`` (why there is no answer, else empty).
    """
    tolerance = {**TOLERANCE, **(tolerance or {})}
    out = []
    for label, group in settings(rows):
        summary = arm_summary(group)
        first = group.iloc[0]
        metric = str(first["metric"])
        entry: dict[str, Any] = {
            "task": first["train_task"],
            "n": first["q_len"],
            "setting": label,
            "metric": metric,
            "tolerance": tolerance.get(metric, np.nan),
            "arms": len(summary),
        }
        exact = summary[summary["exact"].astype(bool)] if len(summary) else summary
        if not len(exact):
            out.append(entry | {"note": "no finished exact-attention run (sdpa/full)"})
            continue
        higher = higher_is_better(metric)
        ref_value = exact["value"].max() if higher else exact["value"].min()
        ref = exact.sort_values("time_ms").iloc[0]
        gap = (ref_value - summary["value"]) if higher else (summary["value"] - ref_value)
        qualified = summary[(gap <= entry["tolerance"] + 1e-12) & summary["time_ms"].notna()]
        if not len(qualified):
            out.append(entry | {"note": "no time per step recorded"})
            continue
        best = qualified.sort_values(["time_ms", "value"], ascending=[True, not higher]).iloc[0]
        attn = _attention_ratio(attention, best, ref, float(first["q_len"]), bool(first["causal"]))
        out.append(
            entry
            | {
                "exact_arm": ref["arm"],
                "exact_value": ref_value,
                "arm": best["arm"],
                "value": best["value"],
                "speedup": ref["time_ms"] / best["time_ms"],
                "mem_ratio": best["peak_mem_bytes"] / ref["peak_mem_bytes"],
                "attn_speedup": attn[0],
                "attn_mem_ratio": attn[1],
                "qualified": len(qualified),
                "note": "",
            }
        )
    return out


INTRO = (
    "Every variant trained inside the same tiny transformer on each setting (one row per "
    "variant, knob, learning rate and seed). The value is the evaluation after training "
    "(MQAR: eval accuracy on the fixed set, higher is better; chars: validation bits per "
    "character, lower is better). Per arm the best learning rate is the one with the best mean "
    "over seeds among the rates where every run finished; the table gives its mean ± sd over "
    "seeds (n runs) and, for sensitivity, the min–max over every rate and seed (n runs). "
    "Steps to 90% are at the best rate (median over the runs that reached it). Time and peak "
    "memory are those of one training step (forward, backward, clipping, AdamW) at the best "
    "rate, as the training job measured them. Parameters: the whole model / its attention "
    "layers (+ the variant's own, where it has any). "
)


def _mean_sd(r: Mapping[str, Any]) -> str:
    sd = r["value_sd"]
    core = f"{fmt(r['value'])} ± {fmt(sd)}" if np.isfinite(sd) else fmt(r["value"])
    return f"{core} (n={int(r['n_best'])})"


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


def setting_table(summary: pd.DataFrame) -> str:
    """One setting's arms (:func:`~harness.tasks.train.report_data.arm_summary`) as markdown."""
    metric = str(summary["metric"].iloc[0])
    accuracy = metric == "accuracy"
    header = [
        "variant", "knob", "state size", f"{METRIC_NAMES.get(metric, metric)} at best lr",
        "min–max over lrs × seeds", "best lr (of n rates)",
        *(["steps to 90%"] if accuracy else []), "ms / step", "MiB / step",
        "params (model / attention)", "runs ok",
    ]  # fmt: skip
    body = []
    for _, r in summary.iterrows():
        state = f"{fmt(r['state'])} {r['state_unit']}" if np.isfinite(r["state"]) else "–"
        body.append(
            [
                str(r["arm"]) + (" (exact)" if r["exact"] else ""),
                knob_cell(r["knob"], r["knob_value"]),
                state,
                _mean_sd(r),
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


def _tolerance_text(tolerance: Mapping[str, float]) -> str:
    names = {"accuracy": "accuracy (absolute)", "bpc": "bits per char"}
    return ", ".join(f"{fmt(v)} {names.get(k, k)}" for k, v in tolerance.items())


#: Below this value exact attention has not learnt the task: the answer means little.
LEARNT: dict[str, float] = {"accuracy": 0.5}


def _unlearnt(e: Mapping[str, Any]) -> str:
    floor = LEARNT.get(str(e["metric"]))
    if floor is None or e["exact_value"] >= floor:
        return ""
    return f" (not learnt: below {fmt(floor)})"


def _task_cell(e: Mapping[str, Any]) -> str:
    """The task and its parameters (the setting's first part): two MQAR settings of one length
    (say 4 and 8 pairs) stay apart."""
    return str(e["setting"]).split(";")[0].replace(f" n={fmt(e['n'])}", "")


def which_markdown(entries: list[dict[str, Any]], tolerance: Mapping[str, float]) -> str:
    """The "Which attention?" table of :func:`which_attention` with its lead text."""
    lead = (
        "For each task and sequence length: the fastest variant (training time per step) whose "
        f"trained value is within {_tolerance_text(tolerance)} of exact attention's (the best "
        "exact arm; time and memory against the fastest exact arm). The answer may be exact "
        "attention itself. Speed-up = exact time / its time and memory ratio = its peak memory "
        "/ exact's: from the training rows (one whole training step), and where the same "
        "folders hold attention rows of both at that length (pass fwd_bwd, same causal flag), "
        "from those (the attention call alone)."
    )
    body = []
    for e in entries:
        if e.get("note"):
            body.append([_task_cell(e), fmt(e["n"]), "–", "–", "–", "–", "–", e["note"]])
            continue
        attn = "–"
        if np.isfinite(e["attn_speedup"]) and np.isfinite(e["attn_mem_ratio"]):
            attn = f"{e['attn_speedup']:.2f}× / {e['attn_mem_ratio']:.2f}"
        body.append(
            [
                _task_cell(e),
                fmt(e["n"]),
                f"{e['exact_arm']}: {fmt(e['exact_value'])}" + _unlearnt(e),
                f"{e['arm']}: {fmt(e['value'])}",
                f"{e['speedup']:.2f}×",
                f"{e['mem_ratio']:.2f}" if np.isfinite(e["mem_ratio"]) else "–",
                attn,
                f"{e['qualified']} of {e['arms']}",
            ]
        )
    header = [
        "task", "n", "exact attention", "fastest within tolerance", "speed-up (training step)",
        "memory ratio (training step)", "speed-up / memory ratio (attention fwd+bwd rows)",
        "arms within tolerance",
    ]  # fmt: skip
    return lead + "\n\n" + markdown_table(header, body)


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
    md = [intro, "", f"Knobs as {STATE_RULE}.", ""]
    for label, group in settings(rows):
        summary = arm_summary(group)
        chance = group["chance"].dropna()
        md += [f"#### {label}", ""]
        if len(chance):
            md += [f"Chance level: {fmt(float(chance.iloc[0]))}.", ""]
        md += [setting_table(summary), ""] if len(summary) else ["No run finished.", ""]
        failed = not_finished_markdown(group)
        md += [failed, ""] if failed else []
    entries = which_attention(rows, attention, tolerance)
    md += ["### Which attention?", "", which_markdown(entries, tolerance), ""]
    return md
