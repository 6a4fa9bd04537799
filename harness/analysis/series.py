"""Rows made ready for analysis: the length axis, devices, contexts and series labels.

:func:`prepare` is the first step of every analysis and figure. Vocabulary used throughout:

* **kv_len**, the key length, is the length axis ("sequence length" in words): the length a
  variant is built for. Rows that lack it take their ``q_len``.
* **device** is ``"<device_name or device> @ <host>"``: two hosts with the same GPU model are
  two devices, because their numbers must not be pooled.
* **series** is one configuration of one variant: the variant name, plus the parameters that
  take more than one value among that variant's rows, e.g. ``sdpa(backend=math)`` next to
  ``sdpa(backend=flash)``, or just ``performer`` when every performer row has the same params.
* **context** is what must be equal for two numbers to be comparable: device, dtype, causal,
  batch, heads and head_dim.

Two things are in every label where the rows say them, whether or not they vary: a variant
whose trainable parameters were not fitted (``trained`` false, e.g. Linformer's random
projections) is labelled ``untrained``, and the parameters of :data:`ALWAYS_NAMED` (Performer's
``eps`` stabiliser, which biases the estimator toward uniform attention) are always named.

Labels read the ``params`` mapping of each row (rows read with
:func:`harness.analysis.rows.read_rows` carry dicts); no variant code is consulted.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

#: Columns that make two rows comparable (see the module docstring).
CONTEXT_KEYS: list[str] = ["device_key", "dtype", "causal", "batch", "heads", "head_dim"]
#: Grouping of one fitted line.
SERIES_KEYS: list[str] = CONTEXT_KEYS + ["series", "variant"]
#: Divergences of the effective attention matrix, headline (total variation) first.
DIVERGENCES: tuple[str, ...] = (
    "attn_tv", "attn_js", "attn_kl_support", "attn_missing_mass", "attn_row_sum_err",
    "attn_negative_mass",
)  # fmt: skip
#: Numeric columns that older rows lack: :func:`prepare` adds them as NaN, so readers need no
#: check (a table shows "–" and a figure leaves the line out where they are absent).
OPTIONAL_NUMERIC: tuple[str, ...] = DIVERGENCES + (
    "baseline_zeros_rel_err", "baseline_uniform_rel_err", "memory_budget_bytes", "ref_rows",
    "backward_flops",
)  # fmt: skip
#: Columns converted to numbers (rows read back from CSV carry text and NaN).
_NUMERIC = (
    "batch", "heads", "q_len", "kv_len", "head_dim", "seed", "time_ms", "time_iqr_ms", "setup_ms",
    "peak_mem_bytes", "analytic_mem_bytes", "flops", "tflops", "matmul_tflops", "rel_err",
    "rel_err_std", "max_abs_err", "cosine", "grad_rel_err", "knob_value",
) + OPTIONAL_NUMERIC  # fmt: skip
#: Per variant, parameters named in every label where a row has them, because they change what
#: is measured: Performer's ``eps`` (0: the unbiased FAVOR+ estimator; performer-pytorch's 1e-4
#: shrinks toward uniform attention and lowers the error on diffuse inputs).
ALWAYS_NAMED: dict[str, frozenset[str]] = {"performer": frozenset({"eps"})}


def as_mapping(value: Any) -> dict[str, Any]:
    """A ``params`` / ``inputs_params`` cell as a dict; missing (None, NaN) is the empty dict.

    Raises:
        TypeError: The cell is something else, e.g. JSON text: rows read with
            :func:`harness.analysis.rows.read_rows` carry dicts (it is the one place that parses).
    """
    if isinstance(value, Mapping):
        return dict(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {}
    raise TypeError(
        f"params must be a mapping, got {type(value).__name__} {value!r}; read rows with "
        "harness.analysis.rows.read_rows"
    )


def _fmt_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


#: Constructor parameters that restate the point's shape (every variant is built for the point's
#: ``kv_len`` and ``head_dim``; older rows say ``seq_len``; per-head parameters are built for the
#: point's ``heads``): never part of a series label, or each length would be a series.
SHAPE_PARAMS = frozenset({"seq_len", "kv_len", "q_len", "head_dim", "heads"})
#: Parameters a variant records about what ran rather than what was asked for (the engine
#: ``auto`` resolved to): absent from rows of points that did not run, so never in a label.
RECORDED_PARAMS = frozenset({"resolved_backend"})
#: The engine knobs the variants declare (``variants.tuning.Knob``: prefix-sum chunks and groups,
#: the band kernel's row blocks): they change a result only by rounding, so rows that differ in
#: them alone measured the same model (tests/test_layout.py keeps this list complete).
ENGINE_KNOBS = frozenset({"chunk_size", "group_elements", "block_size", "forward_block_size"})


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``k=64`` before ``k=256`` (numbers compared as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def series_labels(
    df: pd.DataFrame, ignore: Mapping[str, Iterable[str]] | None = None
) -> pd.Series:
    """The series label of every row: variant name plus its distinguishing params.

    A parameter is distinguishing when it takes more than one value among the rows of that
    variant in ``df`` (a missing key counts as a value), so ``sdpa(backend=math)`` and
    ``sdpa(backend=flash)`` are two series while a variant run with one configuration is just
    its name. Shape parameters (:data:`SHAPE_PARAMS`) never count; :data:`ALWAYS_NAMED` ones
    always do, and rows whose ``trained`` is false end in `` untrained``. Labels depend on the
    whole frame, so compute them once on all rows (:func:`prepare` does) and keep them when
    slicing.

    Args:
        df: Rows with ``variant`` and ``params``.
        ignore: Per variant, parameter names left out of the label (e.g. the knob, to draw a
            variant's error against its knob as one line).
    """
    ignore = {k: set(v) for k, v in (ignore or {}).items()}
    params = df["params"].map(as_mapping)
    untrained = df["trained"].map(is_false) if "trained" in df.columns else None
    labels = pd.Series(index=df.index, dtype=object)
    for variant, idx in df.groupby(df["variant"].astype(str), sort=False).groups.items():
        dicts = params.loc[idx]
        keys = {k for d in dicts for k in d} - ignore.get(variant, set()) - SHAPE_PARAMS
        keys = sorted(keys - RECORDED_PARAMS)
        always = ALWAYS_NAMED.get(variant, frozenset())
        named = [
            k
            for k in keys
            if k in always or len({json.dumps(d.get(k), sort_keys=True) for d in dicts}) > 1
        ]
        for i in idx:
            d = dicts.loc[i]
            parts = [f"{k}={_fmt_value(d.get(k))}" for k in named]
            label = f"{variant}({', '.join(parts)})" if parts else variant
            labels.loc[i] = label + (
                " untrained" if untrained is not None and untrained[i] else ""
            )
    return labels


def is_false(value: Any) -> bool:
    """Whether a flag cell says false explicitly (False, "false", 0); missing is not false."""
    if isinstance(value, (bool, np.bool_)):
        return not bool(value)
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return value == 0
    return isinstance(value, str) and value.strip().lower() in ("false", "0")


def device_keys(df: pd.DataFrame) -> pd.Series:
    """``"<device_name or device> @ <host>"`` per row (host left out when unknown)."""

    def one(row: pd.Series) -> str:
        name = row.get("device_name")
        name = name if isinstance(name, str) and name else str(row.get("device") or "unknown")
        host = row.get("host")
        return f"{name} @ {host}" if isinstance(host, str) and host else name

    if not len(df):
        return pd.Series(index=df.index, dtype=object)
    return df.apply(one, axis=1)


def _flag(value: Any) -> bool:
    """A boolean cell as a bool (CSV gives "True"/"False" text or NaN; missing is False)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return str(value).strip().lower() in ("true", "1")


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with the derived columns every analysis and figure uses.

    Adds ``device_key`` and ``series``; fills a missing ``kv_len`` from ``q_len``; converts
    numeric columns (rows read back from CSV carry strings and NaN) and the flags ``causal``,
    ``exact``, ``randomized`` to bools; fills missing ``dtype``/``causal`` so that grouping does
    not drop rows. Idempotent: a frame that already has ``series`` is returned unchanged (copied).
    """
    out = df.copy()
    if "series" in out.columns and "device_key" in out.columns:
        return out
    for col in OPTIONAL_NUMERIC:
        if col not in out.columns:
            out[col] = np.nan
    for col in _NUMERIC:
        if col in out.columns:
            out[col] = pd.to_numeric(out[col], errors="coerce")
    for col in ("q_len", "kv_len"):
        if col not in out.columns:
            out[col] = np.nan
    out["kv_len"] = out["kv_len"].fillna(out["q_len"])
    for col in ("causal", "exact", "randomized"):
        out[col] = out[col].map(_flag) if col in out.columns else False
    for col, default in (("dtype", "unknown"), ("causal", False), ("pass", "fwd")):
        if col not in out.columns:
            out[col] = default
        out[col] = out[col].where(out[col].notna(), default)
    for col in ("batch", "heads", "head_dim"):
        if col not in out.columns:
            out[col] = np.nan
        out[col] = out[col].fillna(-1).astype(int)  # -1: unknown, keeps the group
    out["variant"] = out["variant"].astype(str)
    out["device_key"] = device_keys(out)
    out["series"] = series_labels(out) if len(out) else pd.Series(dtype=object)
    return out


def inputs_keys(df: pd.DataFrame) -> pd.Series:
    """One text per row naming its inputs setting (``inputs`` and its params): errors depend on
    the inputs, so rows with different keys are never pooled."""
    params = df["inputs_params"].map(lambda p: json.dumps(as_mapping(p), sort_keys=True))
    names = df["inputs"].map(lambda v: v if isinstance(v, str) else "")
    return (names + " " + params).astype(object)


def most_common_inputs(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the most frequent inputs setting of ``df`` (all of ``df`` when empty)."""
    if not len(df):
        return df
    keys = inputs_keys(df)
    return df[keys == keys.value_counts().index[0]]


def per_kv_len(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Median of positive, finite ``metric`` per kv_len over ``ok`` rows (sorted by kv_len)."""
    ok = rows[(rows["status"] == "ok") & np.isfinite(rows[metric].astype(float))]
    ok = ok[ok[metric] > 0]
    return ok.groupby("kv_len")[metric].median().sort_index()
