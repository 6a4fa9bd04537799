"""The "Which attention?" answer: each arm against exact attention, with the seeds' spread.

Terms (setting, arm, value, best learning rate, converged) are
:mod:`harness.tasks.train.report_data`'s. Against exact attention (the best of its exact arms, by
mean over seeds) each arm is

* ``within``: its mean is within the tolerance of exact attention's mean;
* ``not converged``: outside it, and at least one of its seeds was still improving at the cap
  (a rising curve is never called worse);
* ``worse``: outside it, converged, and every seed of it is more than the tolerance from every
  seed of exact attention (the ranges are apart);
* ``unresolved``: outside it by the means, but the seeds' ranges come within the tolerance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from harness.report.markdown import fmt, markdown_table
from harness.tasks.train.report_data import arm_summary, higher_is_better, knob_key, settings

#: "Which attention?" tolerance per metric: a variant qualifies when its trained value is at
#: most this much worse than exact attention's (absolute: accuracy points, bits per char).
TOLERANCE: dict[str, float] = {"accuracy": 0.05, "bpc": 0.05}
#: Below this value exact attention has not learnt the task: the answer means little.
LEARNT: dict[str, float] = {"accuracy": 0.5}
#: The verdicts, in table order.
VERDICTS = ("within", "worse", "not converged", "unresolved")


def reference(summary: pd.DataFrame) -> pd.Series | None:
    """The exact arm with the best mean (the level every arm is held against), or None."""
    exact = summary[summary["exact"].astype(bool)] if len(summary) else summary
    if not len(exact):
        return None
    higher = higher_is_better(str(exact["metric"].iloc[0]))
    return exact.sort_values("value", ascending=not higher).iloc[0]


def verdicts(summary: pd.DataFrame, tolerance: float) -> pd.Series:
    """Each arm's verdict against exact attention (module docstring), indexed like ``summary``;
    empty strings where the setting has no exact arm."""
    ref = reference(summary)
    if ref is None:
        return pd.Series("", index=summary.index)
    higher = higher_is_better(str(ref["metric"]))
    sign = 1.0 if higher else -1.0
    out = []
    for _, arm in summary.iterrows():
        gap = sign * (ref["value"] - arm["value"])
        # how far the arm's best seed is from exact attention's worst seed
        if higher:
            apart = ref["value_min"] - arm["value_max"]
        else:
            apart = arm["value_min"] - ref["value_max"]
        if gap <= tolerance + 1e-12:
            out.append("within")
        elif arm["not_converged"] > 0:
            out.append("not converged")
        elif apart > tolerance:
            out.append("worse")
        else:
            out.append("unresolved")
    return pd.Series(out, index=summary.index)


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

    Exact attention's value is the best mean of its exact arms (``exact`` true: sdpa, full); its
    time and memory per step those of the fastest exact arm. Among the arms ``within`` (exact
    ones included, so the answer may be exact attention itself) the one with the smallest
    training time per step wins. Speed-up = exact time / its time, memory ratio = its peak
    memory / exact's, from the training rows; ``attn_speedup`` / ``attn_mem_ratio`` the same from
    the attention rows (pass fwd_bwd at kv_len = n, same causal flag) where both have one.

    Returns:
        One dict per setting: ``task``, ``n``, ``setting``, ``metric``, ``tolerance``,
        ``exact_arm``, ``exact_value``, ``exact_min``, ``exact_max``, ``exact_converged``,
        ``arm``, ``value``, ``speedup``, ``mem_ratio``, ``attn_speedup``, ``attn_mem_ratio``,
        ``qualified`` (arms within tolerance), ``arms``, ``verdicts`` ({verdict: [arms]}) and
        ``note`` (why there is no answer, else empty).
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
        best_exact = reference(summary)
        if best_exact is None:
            out.append(entry | {"note": "no finished exact-attention run (sdpa/full)"})
            continue
        higher = higher_is_better(metric)
        verdict = verdicts(summary, entry["tolerance"])
        grouped = {v: [str(a) for a in summary.loc[verdict == v, "arm"]] for v in VERDICTS}
        ref = summary[summary["exact"].astype(bool)].sort_values("time_ms").iloc[0]
        entry |= {
            "exact_arm": ref["arm"],
            "exact_value": best_exact["value"],
            "exact_min": best_exact["value_min"],
            "exact_max": best_exact["value_max"],
            "exact_converged": not best_exact["not_converged"],
            "verdicts": grouped,
        }
        qualified = summary[(verdict == "within") & summary["time_ms"].notna()]
        if not len(qualified):
            out.append(entry | {"note": "no time per step recorded"})
            continue
        best = qualified.sort_values(["time_ms", "value"], ascending=[True, not higher]).iloc[0]
        attn = _attention_ratio(attention, best, ref, float(first["q_len"]), bool(first["causal"]))
        out.append(
            entry
            | {
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


def _tolerance_text(tolerance: Mapping[str, float]) -> str:
    names = {"accuracy": "accuracy (absolute)", "bpc": "bits per char"}
    return ", ".join(f"{fmt(v)} {names.get(k, k)}" for k, v in tolerance.items())


def _unlearnt(e: Mapping[str, Any]) -> str:
    floor = LEARNT.get(str(e["metric"]))
    if floor is None or e["exact_value"] >= floor:
        return ""
    return f" (not learnt: below {fmt(floor)})"


def _task_cell(e: Mapping[str, Any]) -> str:
    """The task and its parameters (the setting's first part): two MQAR settings of one length
    (say 4 and 8 pairs) stay apart."""
    return str(e["setting"]).split(";")[0].replace(f" n={fmt(e['n'])}", "")


def _exact_cell(e: Mapping[str, Any]) -> str:
    text = f"{e['exact_arm']}: {fmt(e['exact_value'])}"
    if "exact_min" in e and e["exact_min"] != e["exact_max"]:
        text += f" [{fmt(e['exact_min'])}–{fmt(e['exact_max'])}]"
    if e.get("exact_converged") is False:
        text += " (not converged)"
    return text + _unlearnt(e)


def _verdict_cells(e: Mapping[str, Any]) -> list[str]:
    grouped = e.get("verdicts") or {}
    cells = [f"{len(grouped.get('within', []))} of {e['arms']}"]
    for name in VERDICTS[1:]:
        arms = grouped.get(name, [])
        cells.append(f"{len(arms)}" + (f": {', '.join(arms)}" if arms else ""))
    return cells


def which_markdown(entries: list[dict[str, Any]], tolerance: Mapping[str, float]) -> str:
    """The "Which attention?" table of :func:`which_attention` with its lead text."""
    lead = (
        "For each task and sequence length: the fastest variant (training time per step) whose "
        f"trained value (mean over seeds) is within {_tolerance_text(tolerance)} of exact "
        "attention's (the best exact arm, its range over seeds in brackets; time and memory "
        "against the fastest exact arm). The answer may be exact attention itself. Speed-up = "
        "exact time / its time and memory ratio = its peak memory / exact's: from the training "
        "rows (one whole training step), and where the same folders hold attention rows of both "
        "at that length (pass fwd_bwd, same causal flag), from those (the attention call alone). "
        "An arm outside the tolerance is *worse* only when it converged and every seed of it is "
        "more than the tolerance from every seed of exact attention; *not converged* when a seed "
        "was still improving at the cap (its value is a bound, not its level); *unresolved* when "
        "the seeds' ranges come within the tolerance."
    )
    body = []
    for e in entries:
        if e.get("note") and "exact_arm" not in e:
            body.append([_task_cell(e), fmt(e["n"]), "–", "–", "–", "–", "–", e["note"]])
            body[-1] += ["–"] * 3
            continue
        if e.get("note"):
            body.append([_task_cell(e), fmt(e["n"]), _exact_cell(e), e["note"], "–", "–", "–"])
            body[-1] += _verdict_cells(e)
            continue
        attn = "–"
        if np.isfinite(e["attn_speedup"]) and np.isfinite(e["attn_mem_ratio"]):
            attn = f"{e['attn_speedup']:.2f}× / {e['attn_mem_ratio']:.2f}"
        body.append(
            [
                _task_cell(e),
                fmt(e["n"]),
                _exact_cell(e),
                f"{e['arm']}: {fmt(e['value'])}",
                f"{e['speedup']:.2f}×",
                f"{e['mem_ratio']:.2f}" if np.isfinite(e["mem_ratio"]) else "–",
                attn,
                *_verdict_cells(e),
            ]
        )
    header = [
        "task", "n", "exact attention", "fastest within tolerance", "speed-up (training step)",
        "memory ratio (training step)", "speed-up / memory ratio (attention fwd+bwd rows)",
        "arms within tolerance", "worse", "not converged", "unresolved",
    ]  # fmt: skip
    return lead + "\n\n" + markdown_table(header, body)
