"""Training rows (``task == "train"``) made ready for the "Quality after training" section.

Terms (setting, arm, family, value, best learning rate, converged) and the summary per arm are
:mod:`harness.analysis.trained`'s, shared with ``attnbench-advise``; this module adds what only
the report draws: the knob read as state size, the recurrent state in bytes, learning curves,
the runs that did not finish and the untrained error of each arm.

Rows only: nothing here imports the training code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis.rows import parse_json
from harness.analysis.series import as_mapping, prepare
from harness.analysis.trained import (
    IGNORED_PARAMS,
    arm_summary,
    higher_is_better,
    knob_key,
    setting_label,
    settings,
    train_arms,
)
from harness.report.sections import task_rows
from harness.report.style import most_common_inputs, natural_key
from harness.tasks.train.state import state_bytes

__all__ = [
    "IGNORED_PARAMS", "METRIC_NAMES", "STATE_RULE", "arm_summary", "curve_points", "error_of",
    "higher_is_better", "knob_key", "not_finished", "setting_label", "settings", "state_size",
    "train_frame", "untrained_errors",
]  # fmt: skip

#: Reader's name of each task's metric.
METRIC_NAMES: dict[str, str] = {"accuracy": "eval accuracy", "bpc": "validation bits per char"}
#: How each knob is read as state/memory size (the figure's and the report's note).
STATE_RULE = (
    "state size: the keys one query sees for sliding windows (window + 1 causal, 2·window + 1 "
    "bidirectional, plus global tokens) and BigBird (block_size × (2·window_blocks + 1 + global "
    "+ random blocks)); Linformer's k projected key rows; Performer's nb_features random "
    "features (its running state is nb_features × head_dim per head); Nyström's num_landmarks; "
    "exact attention's n keys; every count capped at n; another knob is shown as its value"
)


def curve_points(value: Any) -> tuple[np.ndarray, np.ndarray]:
    """A row's ``curve`` (``[[step, value], ...]``, or its JSON text) as (steps, values)."""
    points = parse_json(value)
    if not isinstance(points, list):
        return np.array([]), np.array([])
    pairs = [p for p in points if isinstance(p, (list, tuple)) and len(p) == 2]
    arr = np.array(pairs, dtype=float).reshape(-1, 2)
    keep = np.isfinite(arr).all(axis=1)
    return arr[keep, 0], arr[keep, 1]


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

    Adds the columns of :func:`harness.analysis.trained.train_arms` (``setting_key`` /
    ``setting``, ``arm``, ``family``, ``metric``, ``value``, ``converged``) and ``state`` /
    ``state_unit`` (:func:`state_size`), filling ``state_bytes`` where rows lack it. Empty when
    there are none.
    """
    rows = prepare(df[task_rows(df, "train")]) if len(df) else df.iloc[:0]
    if not len(rows):
        return rows
    rows = train_arms(rows)
    sizes = [
        state_size(r.knob, r.knob_value, as_mapping(r.params), r.q_len, bool(r.causal), r.exact)
        for r in rows.itertuples()
    ]
    rows["state"] = [s[0] if s else np.nan for s in sizes]
    rows["state_unit"] = [s[1] if s else None for s in sizes]
    missing = rows["state_bytes"].isna()
    rows.loc[missing, "state_bytes"] = [_state_bytes(r) for r in rows[missing].itertuples()]
    return rows


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


def error_of(errors: Mapping, arm: Mapping[str, Any], n: float, causal: bool) -> float:
    """The untrained error of one summary arm (NaN when the accuracy rows lack it)."""
    key = (arm["variant"], knob_key(arm["knob_value"]), float(n), bool(causal))
    return float(errors.get(key, np.nan))
