"""Training rows (``task == "train"``) made ready for the "Quality after training" section.

Vocabulary of :mod:`harness.tasks.train.report_markdown` and
:mod:`harness.tasks.train.report_figures`:

* a **setting** is one training problem: the task (``mqar`` or ``chars``), its length ``q_len``,
  causal or not, the task's parameters, the model's shape, the step budget and batch. Numbers of
  two settings are never pooled.
* an **arm** is one configuration of one variant inside a setting: the variant and its
  distinguishing parameters (the knob among them), as :func:`harness.analysis.series.
  series_labels` names them over the training rows alone; the seed of a randomized variant and
  the backend it resolved to are not part of the name. A **family** is an arm without its knob
  (one line against the knob).
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
from harness.analysis.series import as_mapping, prepare, series_labels
from harness.report.sections import task_rows
from harness.report.style import most_common_inputs, natural_key
from harness.tasks.train.state import state_bytes

#: Reader's name of each task's metric.
METRIC_NAMES: dict[str, str] = {"accuracy": "eval accuracy", "bpc": "validation bits per char"}
#: Parameters that never make two arms: a randomized variant's seed follows the row's seed, and
#: the resolved backend is an outcome, not a choice.
IGNORED_PARAMS = frozenset({"seed", "resolved_backend"})
#: How each knob is read as state/memory size (the figure's and the report's note).
STATE_RULE = (
    "state size: the keys one query sees for sliding windows (window + 1 causal, 2·window + 1 "
    "bidirectional, plus global tokens) and BigBird (block_size × (2·window_blocks + 1 + global "
    "+ random blocks)); Linformer's k projected key rows; Performer's nb_features random "
    "features (its running state is nb_features × head_dim per head); Nyström's num_landmarks; "
    "exact attention's n keys; every count capped at n; another knob is shown as its value"
)
#: Numeric columns of training rows (CSV gives text).
_NUMERIC = (
    "lr", "steps", "steps_run", "nan_step", "final_eval", "best_eval", "steps_to_50",
    "steps_to_90", "steps_to_99", "chance", "n_params", "n_attention_params",
    "n_variant_params", "time_ms", "peak_mem_bytes", "q_len", "kv_len", "knob_value", "seed",
    "plateau", "state_bytes", "min_steps", "plateau_window", "plateau_delta",
)  # fmt: skip


def higher_is_better(metric: str) -> bool:
    """Accuracy: higher is better; bits per character (and anything else): lower."""
    return metric == "accuracy"


def curve_points(value: Any) -> tuple[np.ndarray, np.ndarray]:
    """A row's ``curve`` (``[[step, value], ...]``, or its JSON text) as (steps, values)."""
    points = parse_json(value)
    if not isinstance(points, list):
        return np.array([]), np.array([])
    pairs = [p for p in points if isinstance(p, (list, tuple)) and len(p) == 2]
    arr = np.array(pairs, dtype=float).reshape(-1, 2)
    keep = np.isfinite(arr).all(axis=1)
    return arr[keep, 0], arr[keep, 1]


def _text(value: Any) -> str:
    return json.dumps(parse_json(value), sort_keys=True, default=str)


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
        parts.append(
            f"width {model.get('width')} × {model.get('layers')} layers, {heads} "
            f"head{'s' if heads != 1 else ''}, {f'MLP ×{mlp}' if mlp else 'no MLP'}"
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


def state_size(
    knob: Any, value: Any, params: Mapping[str, Any], n: float, causal: bool, exact: bool
) -> tuple[float, str] | None:
    """The knob read as state/memory size (see :data:`STATE_RULE`): (size, unit) or None."""
    if exact:
        return float(n), "keys"
    if not isinstance(knob, str) or value is None or not np.isfinite(float(value)):
        return None
    v = float(value)
    if knob == "window":
        keys = (v + 1 if causal else 2 * v + 1) + float(params.get("num_global") or 0)
        return min(keys, n), "keys"
    if knob == "num_random_blocks":
        blocks = 2 * float(params.get("window_blocks", 1)) + 1
        blocks += float(params.get("num_global_blocks", 1)) + v
        return min(float(params.get("block_size", 64)) * blocks, n), "keys"
    units = {"k": "projected rows", "num_landmarks": "landmarks", "nb_features": "features"}
    if knob in units:
        return (v if knob == "nb_features" else min(v, n)), units[knob]
    return v, knob


def train_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The training rows of ``df``, prepared, with the columns this section reads.

    Adds ``setting_key`` / ``setting`` (label), ``arm``, ``family``, ``metric`` (filled from
    ``train_task``), ``value`` and ``state`` / ``state_unit``. Empty when there are none.
    """
    rows = prepare(df[task_rows(df, "train")]) if len(df) else df.iloc[:0]
    if not len(rows):
        return rows
    rows = rows.copy()
    for col in _NUMERIC:
        rows[col] = pd.to_numeric(rows[col], errors="coerce") if col in rows else np.nan
    for col in ("train_task", "metric", "task_params", "model", "curve", "reason", "stop_reason"):
        if col not in rows:
            rows[col] = None
    known = rows["converged"] if "converged" in rows else pd.Series(None, index=rows.index)
    rows["converged"] = [_converged(v) for v in known]
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
    sizes = [
        state_size(r.knob, r.knob_value, as_mapping(r.params), r.q_len, bool(r.causal), r.exact)
        for r in rows.itertuples()
    ]
    rows["state"] = [s[0] if s else np.nan for s in sizes]
    rows["state_unit"] = [s[1] if s else None for s in sizes]
    missing = rows["state_bytes"].isna()
    rows.loc[missing, "state_bytes"] = [_state_bytes(r) for r in rows[missing].itertuples()]
    return rows


def _converged(value: Any) -> bool:
    """A row's ``converged`` (bool, or text from CSV); unknown (older rows) counts as True."""
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0")
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return True
    return bool(value)


def _state_bytes(r: Any) -> float:
    """:func:`harness.tasks.train.state.state_bytes` of a row without the column."""
    layers = as_mapping(parse_json(r.model)).get("layers")
    if layers is None or not np.isfinite(r.q_len):
        return np.nan
    size = state_bytes(
        str(r.variant), as_mapping(r.params), int(r.q_len), int(r.head_dim), int(r.heads),
        int(layers), bool(r.causal), bool(r.exact), str(r.dtype),
    )  # fmt: skip
    return np.nan if size is None else size


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
    ``state_unit``, ``state_bytes``, ``metric``, ``chance``, ``plateau``; ``best_lr`` and, at it,
    ``value`` (mean over seeds), ``value_min`` / ``value_max`` (their range), ``value_sd``,
    ``n_best`` (runs), ``not_converged`` (runs still improving at the cap), ``stop_reasons``
    ({reason: runs}), ``steps_to_90`` (median over the runs that reached 90%),
    ``reached_90`` (how many did), ``time_ms``, ``peak_mem_bytes`` (medians); over every
    learning rate and seed ``spread_min``, ``spread_max``, ``n_all``; ``runs_ok`` /
    ``runs_total`` (every status); ``n_lrs``; ``lr_means`` ({lr: mean value});
    ``n_params``, ``n_attention_params``, ``n_variant_params``.
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
                **{c: first[c] for c in ("state", "state_unit", "metric", "chance", "plateau")},
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


def not_finished(rows: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not finish (any status but ok): listed in the report, never plotted."""
    bad = rows[rows["status"] != "ok"]
    cols = ["arm", "knob", "knob_value", "lr", "seed", "status", "nan_step", "reason"]
    return bad[cols].sort_values(["arm", "lr", "seed"], key=_sort_key).reset_index(drop=True)


def _sort_key(col: pd.Series) -> pd.Series:
    return col.map(lambda v: natural_key(str(v))) if col.dtype == object else col


def untrained_errors(train: pd.DataFrame, attention: pd.DataFrame) -> tuple[dict, str]:
    """Untrained approximation error per (variant, knob value, length, causal) of ``train``.

    Read from the accuracy rows of ``attention`` (the same device's forward rows with
    ``rel_err``; the most common inputs setting, medians over seeds), matched on variant, knob
    value, ``kv_len`` = the training length and the causal flag.

    Returns:
        ``({(variant, knob_value or None, n, causal): rel_err}, inputs label)``; empty when no
        accuracy row matches.
    """
    if not len(attention) or "rel_err" not in attention:
        return {}, ""
    fwd = attention[
        (attention["pass"] == "fwd") & (attention["status"] == "ok") & attention["rel_err"].notna()
    ]
    if not len(fwd):
        return {}, ""
    fwd, inputs = most_common_inputs(fwd)
    errors = {}
    for key, group in fwd.groupby(["variant", "knob_value", "kv_len", "causal"], dropna=False):
        variant, value, n, causal = key
        errors[(variant, knob_key(value), float(n), bool(causal))] = group["rel_err"].median()
    wanted = {
        (r.variant, knob_key(r.knob_value), float(r.q_len), bool(r.causal))
        for r in train.itertuples()
    }
    return {k: v for k, v in errors.items() if k in wanted}, inputs


def knob_key(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def error_of(errors: Mapping, arm: Mapping[str, Any], n: float, causal: bool) -> float:
    """The untrained error of one summary arm (NaN when the accuracy rows lack it)."""
    key = (arm["variant"], knob_key(arm["knob_value"]), float(n), bool(causal))
    return float(errors.get(key, np.nan))
