"""The "Which attention?" rule: one implementation for the report and for ``attnbench-advise``.

**Trained quality.** Against exact attention (the best of its exact arms, by mean over seeds)
each trained arm (:mod:`harness.analysis.trained`) is

* ``within``: its mean is within the tolerance of exact attention's mean;
* ``not converged``: outside it, and at least one of its seeds was still improving at the cap
  (a rising curve is never called worse);
* ``worse``: outside it, converged, and every seed of it is more than the tolerance from every
  seed of exact attention (the ranges are apart);
* ``unresolved``: outside it by the means, but the seeds' ranges come within the tolerance.

**The choice.** Among the arms that qualify, the fastest wins (:func:`fastest`); its speed-up is
the fastest exact arm's time over its time and its memory ratio its peak memory over that arm's
(:func:`against`). Exact arms qualify on error and trained quality by definition, so the answer
may be exact attention itself. The report's table (:func:`which_attention`) qualifies an arm by
its trained verdict (``within``); advise (:func:`rank`) adds the user's limits: a memory cap and
a largest approximation error (arms that do not approximate softmax are exempt: n/a); an
approximation whose error is no smaller than uniform attention's (the mean of the values, the
trivial baseline) approximates nothing and never qualifies, and without an error limit one
must have at most half of uniform's error (:data:`DEFAULT_ERROR_SHARE`). Its arms
need not have trained rows: with a trained-quality tolerance asked for (``strict``) only
``within`` qualifies, as in the report; otherwise (``known``) an arm whose trained verdict is
known and not ``within`` is excluded and one without trained rows stays, flagged as unknown,
unless it is its own operator (not softmax): its error does not apply, so without trained rows
nothing speaks for its quality and it is ranked but not recommended.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis.trained import arm_summary, higher_is_better, knob_key, settings

#: Trained-quality tolerance per metric: a variant qualifies when its trained value is at most
#: this much worse than exact attention's (absolute: accuracy points, bits per char).
TOLERANCE: dict[str, float] = {"accuracy": 0.05, "bpc": 0.05}
#: Below this value exact attention has not learnt the task: the answer means little.
LEARNT: dict[str, float] = {"accuracy": 0.5}
#: Without an error limit from the user, an approximation qualifies only when its error is at
#: most this share of uniform attention's: it must recover at least half of what the trivial
#: baseline misses (an error of 0.51 beside uniform's 0.52 approximates nothing useful).
DEFAULT_ERROR_SHARE = 0.5
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


def fastest_exact(table: pd.DataFrame, time: str = "time_ms") -> pd.Series | None:
    """The exact arm with the smallest ``time`` (arms without one last), or None."""
    exact = table[table["exact"].astype(bool)] if len(table) else table
    return exact.sort_values(time).iloc[0] if len(exact) else None


def fastest(
    table: pd.DataFrame,
    qualified: pd.Series,
    time: str = "time_ms",
    value: str | None = None,
    higher: bool = True,
) -> pd.Series | None:
    """The fastest arm among ``qualified`` ones that have a time (ties: the better ``value``)."""
    pool = table[qualified & table[time].notna()]
    if not len(pool):
        return None
    if value is None:
        return pool.sort_values(time, kind="stable").iloc[0]
    return pool.sort_values([time, value], ascending=[True, not higher]).iloc[0]


def against(
    arm: Mapping[str, Any],
    ref: Mapping[str, Any],
    time: str = "time_ms",
    mem: str = "peak_mem_bytes",
) -> tuple[float, float]:
    """(speed-up, memory ratio) of ``arm`` against ``ref``: ref time / its time, its memory /
    ref memory (NaN where a value is missing)."""

    def num(row: Mapping[str, Any], col: str) -> float:
        value = row.get(col) if hasattr(row, "get") else None
        try:
            return float(value)
        except (TypeError, ValueError):
            return np.nan

    return num(ref, time) / num(arm, time), num(arm, mem) / num(ref, mem)


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

    def medians(a: Mapping[str, Any]) -> dict[str, float]:
        key = knob_key(a["knob_value"])
        same = rows["knob_value"].map(lambda v: knob_key(v) == key)
        mine = rows[(rows["variant"] == a["variant"]) & same]
        if not len(mine):
            return {}
        return {
            "time_ms": mine["time_ms"].median(),
            "peak_mem_bytes": mine["peak_mem_bytes"].median(),
        }

    return against(medians(arm), medians(ref))


def which_attention(
    rows: pd.DataFrame, attention: pd.DataFrame, tolerance: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """Per training setting: the fastest arm whose trained value is within tolerance of exact
    attention's (the report's table).

    Exact attention's value is the best mean of its exact arms (``exact`` true: sdpa, full); its
    time and memory per step those of the fastest exact arm. Among the arms ``within`` (exact
    ones included, so the answer may be exact attention itself) the one with the smallest
    training time per step wins. Speed-up and memory ratio (:func:`against`) from the training
    rows; ``attn_speedup`` / ``attn_mem_ratio`` the same from the attention rows (pass fwd_bwd
    at kv_len = n, same causal flag) where both have one.

    Args:
        rows: Training rows with the columns of :func:`harness.analysis.trained.train_arms`.
        attention: Attention rows of the same device (prepared).
        tolerance: Per metric, overrides of :data:`TOLERANCE`.

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
        ref = fastest_exact(summary)
        entry |= {
            "exact_arm": ref["arm"],
            "exact_value": best_exact["value"],
            "exact_min": best_exact["value_min"],
            "exact_max": best_exact["value_max"],
            "exact_converged": not best_exact["not_converged"],
            "verdicts": grouped,
        }
        within = verdict == "within"
        best = fastest(summary, within, value="value", higher=higher)
        if best is None:
            out.append(entry | {"note": "no time per step recorded"})
            continue
        speedup, mem_ratio = against(best, ref)
        attn = _attention_ratio(attention, best, ref, float(first["q_len"]), bool(first["causal"]))
        out.append(
            entry
            | {
                "arm": best["arm"],
                "value": best["value"],
                "speedup": speedup,
                "mem_ratio": mem_ratio,
                "attn_speedup": attn[0],
                "attn_mem_ratio": attn[1],
                "qualified": int((within & summary["time_ms"].notna()).sum()),
                "note": "",
            }
        )
    return out


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def exclusions(
    arm: Mapping[str, Any],
    max_memory_bytes: float | None = None,
    max_error: float | None = None,
    quality: str | None = "known",
) -> list[str]:
    """Why an arm that ran does not qualify under the limits (module docstring); [] if it does."""
    out = []
    mem = _number(arm.get("peak_mem_bytes"))
    if max_memory_bytes is not None and not mem <= max_memory_bytes:
        out.append("memory over the cap" if np.isfinite(mem) else "memory not measured")
    exact = bool(arm.get("exact"))
    approximates = bool(arm.get("approximates_softmax", True))
    if approximates and not exact:
        err, base = _number(arm.get("rel_err")), _number(arm.get("baseline_uniform_rel_err"))
        if max_error is not None and not err <= max_error:
            out.append("error over the limit" if np.isfinite(err) else "error not measured")
        elif err >= base:  # False when either is NaN
            out.append("error no better than uniform attention")
        elif max_error is None and err > DEFAULT_ERROR_SHARE * base:
            out.append("error over half of uniform attention's (no error limit given)")
    verdict = arm.get("trained_verdict")
    verdict = verdict if isinstance(verdict, str) and verdict else None
    if quality and not exact and verdict != "within":
        if verdict is not None:
            out.append(f"trained quality {verdict}")
        elif quality == "strict" or not approximates:
            out.append("no trained-quality rows" + ("" if approximates else " (error n/a)"))
    return out


def rank(
    arms: pd.DataFrame,
    max_memory_bytes: float | None = None,
    max_error: float | None = None,
    quality: str | None = "known",
) -> pd.DataFrame:
    """Advise's table: every arm qualified or excluded (with why), ranked by the choice rule.

    Args:
        arms: One row per arm at one setting: ``arm``, ``exact``, ``approximates_softmax``,
            ``status``, ``reason``, ``time_ms``, ``peak_mem_bytes``, ``rel_err``,
            ``baseline_uniform_rel_err`` and ``trained_verdict`` (a verdict, or None without
            trained rows).
        max_memory_bytes: Arms whose peak memory exceeds it are excluded (None: no cap).
        max_error: Approximating arms whose error exceeds it (or that have none) are excluded.
        quality: ``strict``: a non-exact arm qualifies only with the verdict ``within``;
            ``known``: one with another verdict is excluded, one without any stays (unless it
            does not approximate softmax); None: off.

    Returns:
        ``arms`` with ``excluded`` (why, "" when it qualifies), ``qualified``, ``speedup`` and
        ``mem_ratio`` against the fastest exact arm that ran, and ``rank`` (1 = the answer; None
        for the others), ordered: qualified by time, then the excluded by time, then those that
        did not run.
    """
    table = arms.reset_index(drop=True).copy()
    ran = (table["status"] == "ok") & pd.to_numeric(table["time_ms"], errors="coerce").notna()
    table["excluded"] = [
        "; ".join(exclusions(arm, max_memory_bytes, max_error, quality))
        if ran[i]
        else str(arm.get("reason") or arm.get("status") or "not measured")
        for i, arm in table.iterrows()
    ]
    table["qualified"] = ran & (table["excluded"] == "")
    ref = fastest_exact(table[ran])
    ratios = [
        against(a, ref) if ref is not None else (np.nan, np.nan) for _, a in table.iterrows()
    ]
    table["speedup"] = [r[0] for r in ratios]
    table["mem_ratio"] = [r[1] for r in ratios]
    table["_group"] = np.where(table["qualified"], 0, np.where(ran, 1, 2))
    table = table.sort_values(["_group", "time_ms"], kind="stable").drop(columns="_group")
    table["rank"] = [i + 1 if ok else None for i, ok in enumerate(table["qualified"])]
    return table.reset_index(drop=True)
