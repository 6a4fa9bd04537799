"""Training rows (``task == "train"``) read as settings and arms: the report and advise share it.

* a **setting** is one training problem: the task (``mqar`` or ``chars``), its length ``q_len``,
  causal or not, the task's parameters, the model's shape, the step budget and batch. Numbers of
  two settings are never pooled.
* an **arm** is one configuration of one variant inside a setting: the variant and its
  distinguishing parameters (the knob among them), as :func:`harness.analysis.series.
  series_labels` names them over the training rows alone; the seed of a randomized variant and
  the backend it resolved to are not part of the name. A **family** is an arm without its knob.
* the **value** of a run is its evaluation after training (``final_eval``: the eval accuracy for
  MQAR, validation bits per character for chars; ``best_eval`` where a row lacks it).
* the **best learning rate** of an arm is the one with the best mean value over seeds, among the
  rates where every run finished (any rate with a finished run where none did).
* a run **converged** when it stopped at the target or on a flat curve (``stop_reason`` target
  or plateau); one stopped by the cap (``cap``) was still improving, and its value is a bound,
  not the arm's level. Rows without the column count as converged (older rows).

Rows only: nothing here imports the training code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis.rows import parse_json
from harness.analysis.series import ENGINE_KNOBS, as_mapping, natural_key, series_labels

#: Parameters that never make two arms: a randomized variant's seed follows the row's seed, and
#: the resolved backend is an outcome, not a choice.
#: Engine knobs (chunk and block sizes, :data:`~harness.analysis.series.ENGINE_KNOBS`) change
#: results only by rounding: rows that differ in them alone are one arm (e.g. a fixed chunk of
#: 64 before tuning, auto after).
IGNORED_PARAMS = frozenset({"seed", "resolved_backend"}) | ENGINE_KNOBS
#: Numeric columns of training rows (CSV gives text).
NUMERIC = (
    "lr", "steps", "steps_run", "nan_step", "final_eval", "best_eval", "steps_to_50",
    "steps_to_90", "steps_to_99", "chance", "n_params", "n_attention_params",
    "n_variant_params", "time_ms", "peak_mem_bytes", "q_len", "kv_len", "knob_value", "seed",
    "plateau", "state_bytes", "min_steps", "plateau_window", "plateau_delta", "trivial_margin",
)  # fmt: skip


def higher_is_better(metric: str) -> bool:
    """Accuracy: higher is better; bits per character (and anything else): lower."""
    return metric == "accuracy"


def knob_key(value: Any) -> float | None:
    """A knob value as a comparable number (None when there is none)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _text(value: Any) -> str:
    return json.dumps(parse_json(value), sort_keys=True, default=str)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _int(value: Any) -> str:
    try:
        return str(int(float(value)))
    except (TypeError, ValueError):
        return "?"


def setting_label(row: Mapping[str, Any]) -> str:
    """A reader's name of a row's setting, e.g. ``mqar n=64 causal, 4 pairs, vocab 256; width
    64 × 2 layers, 1 head, no MLP; ≤ 600 steps of batch 64``."""
    task = str(row.get("train_task"))
    params = as_mapping(parse_json(row.get("task_params")))
    model = as_mapping(parse_json(row.get("model")))
    n = _int(row.get("q_len"))
    parts = [f"{task} n={n} {'causal' if row.get('causal') else 'bidirectional'}"]
    if task == "mqar":
        extra = [f"{params['num_pairs']} pairs"] if "num_pairs" in params else []
        extra += [f"vocab {params['vocab']}"] if "vocab" in params else []
        if params.get("num_queries") not in (None, params.get("num_pairs")):
            extra.append(f"{params['num_queries']} queries")
        parts[0] += (", " + ", ".join(extra)) if extra else ""
    elif task == "chars":
        parts[0] += f", pydoc text, vocab {params.get('vocab', '?')}"
    if model:
        mlp = model.get("mlp_ratio") or 0
        heads = model.get("heads")
        conv = model.get("short_conv") or 0
        parts.append(
            f"width {model.get('width')} × {model.get('layers')} layers, {heads} "
            f"head{'s' if heads != 1 else ''}, {f'MLP ×{mlp}' if mlp else 'no MLP'}"
            + (f", short conv {conv} on q, k, v" if conv else "")
        )
    budget = f"≤ {_int(row.get('steps'))} steps of batch {_int(row.get('batch'))}"
    delta = _float(row.get("plateau_delta"))
    if np.isfinite(delta):
        window = _float(row.get("plateau_window"))
        budget += (
            f", stop when the last {window:.0%} of the curve gains < {delta:g}"
            f" (from step {_int(row.get('min_steps'))})"
        )
    parts.append(budget)
    return "; ".join(parts)


def converged(value: Any) -> bool:
    """A row's ``converged`` (bool, or text from CSV); unknown (older rows) counts as True."""
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0")
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return True
    return bool(value)


def train_arms(rows: pd.DataFrame) -> pd.DataFrame:
    """Prepared training rows with the columns of settings and arms (a copy).

    Adds ``setting_key`` / ``setting`` (label), ``arm``, ``family``, ``metric`` (filled from
    ``train_task``), ``value`` and ``converged`` (a bool); converts :data:`NUMERIC`.
    """
    rows = rows.copy()
    for col in NUMERIC:
        rows[col] = pd.to_numeric(rows[col], errors="coerce") if col in rows else np.nan
    for col in ("train_task", "metric", "task_params", "model", "curve", "reason", "stop_reason"):
        if col not in rows:
            rows[col] = None
    known = rows["converged"] if "converged" in rows else pd.Series(None, index=rows.index)
    rows["converged"] = [converged(v) for v in known]
    default_metric = rows["train_task"].map({"mqar": "accuracy", "chars": "bpc"})
    rows["metric"] = rows["metric"].where(rows["metric"].notna(), default_metric)
    rows["value"] = rows["final_eval"].where(rows["final_eval"].notna(), rows["best_eval"])
    keys = ["train_task", "q_len", "causal", "task_params", "model", "steps", "batch"]
    keys += [k for k in ("min_steps", "plateau_window", "plateau_delta") if rows[k].notna().any()]
    rows["setting_key"] = rows[keys].apply(lambda r: _text(r.to_dict()), axis=1)
    rows["setting"] = rows.apply(setting_label, axis=1)
    variants = rows["variant"].unique()
    rows["arm"] = series_labels(rows, {v: IGNORED_PARAMS for v in variants})
    knobs = {
        v: IGNORED_PARAMS | set(rows.loc[rows["variant"] == v, "knob"].dropna()) for v in variants
    }
    rows["family"] = series_labels(rows, knobs)
    return rows


def settings(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per setting: MQAR before chars, then by length, then by label."""
    groups = [(g["setting"].iloc[0], g) for _, g in rows.groupby("setting_key", sort=False)]
    order = {"mqar": 0, "chars": 1}
    return sorted(
        groups,
        key=lambda t: (
            order.get(str(t[1]["train_task"].iloc[0]), 2),
            float(t[1]["q_len"].iloc[0]),
            natural_key(t[0]),
        ),
    )


def _best_lr(ok: pd.DataFrame, finished: pd.Series, higher: bool) -> float:
    """The learning rate with the best mean value (see the module docstring)."""
    means = ok.groupby("lr")["value"].mean()
    clean = means[means.index.isin(finished[finished].index)]
    pool = clean if len(clean) else means
    return float(pool.idxmax() if higher else pool.idxmin())


def arm_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per arm of one setting that has a finished run (status ok with a value).

    Columns: ``arm``, ``family``, ``variant``, ``knob``, ``knob_value``, ``exact``, ``state``,
    ``state_unit``, ``state_bytes`` (NaN where the rows lack them), ``metric``, ``chance``,
    ``plateau``; ``best_lr`` and, at it, ``value`` (mean over seeds), ``value_min`` /
    ``value_max`` (their range), ``value_sd``, ``n_best`` (runs), ``not_converged`` (runs still
    improving at the cap), ``stop_reasons`` ({reason: runs}), ``steps_to_90`` (median over the
    runs that reached 90%), ``reached_90`` (how many did), ``time_ms``, ``peak_mem_bytes``
    (medians); over every learning rate and seed ``spread_min``, ``spread_max``, ``n_all``;
    ``runs_ok`` / ``runs_total`` (every status); ``n_lrs``; ``lr_means`` ({lr: mean value});
    ``n_params``, ``n_attention_params``, ``n_variant_params``. Exact arms first.
    """
    out = []
    for arm, group in rows.groupby("arm", sort=False):
        ok = group[(group["status"] == "ok") & group["value"].notna()]
        if not len(ok):
            continue
        metric = str(ok["metric"].iloc[0])
        higher = higher_is_better(metric)
        finished = group.groupby("lr")["status"].agg(lambda s: bool((s == "ok").all()))
        lr = _best_lr(ok, finished, higher)
        best = ok[ok["lr"] == lr]
        first = ok.iloc[0]
        out.append(
            {
                "arm": arm,
                **{c: first[c] for c in ("family", "variant", "knob", "knob_value", "exact")},
                **{c: first.get(c, np.nan) for c in ("state", "state_unit")},
                **{c: first[c] for c in ("metric", "chance", "plateau")},
                "state_bytes": best["state_bytes"].median(),
                "best_lr": lr,
                "value": best["value"].mean(),
                "value_min": best["value"].min(),
                "value_max": best["value"].max(),
                "value_sd": best["value"].std(ddof=1) if len(best) > 1 else np.nan,
                "n_best": len(best),
                "not_converged": int((~best["converged"].astype(bool)).sum()),
                "stop_reasons": best["stop_reason"].dropna().value_counts().to_dict(),
                "steps_to_90": best["steps_to_90"].median(),
                "reached_90": int(best["steps_to_90"].notna().sum()),
                "time_ms": best["time_ms"].median(),
                "peak_mem_bytes": best["peak_mem_bytes"].median(),
                "spread_min": ok["value"].min(),
                "spread_max": ok["value"].max(),
                "n_all": len(ok),
                "runs_ok": int((group["status"] == "ok").sum()),
                "runs_total": len(group),
                "n_lrs": int(group["lr"].nunique()),
                "lr_means": ok.groupby("lr")["value"].mean().to_dict(),
                **{c: best[c].median() for c in ("n_params", "n_attention_params")},
                "n_variant_params": best["n_variant_params"].median(),
            }
        )
    table = pd.DataFrame(out)
    if not len(table):
        return table
    order = sorted(
        range(len(table)),
        key=lambda i: (not table["exact"].iloc[i], natural_key(str(table["arm"].iloc[i]))),
    )
    return table.iloc[order].reset_index(drop=True)
