"""Scaling analysis over result rows: slopes, crossovers, memory limits, the summary table.

Every function takes a pandas DataFrame of rows (the columns of
:data:`harness.analysis.rows.COLUMNS`, as :func:`harness.analysis.rows.read_rows` returns them),
prepares it (:func:`harness.analysis.series.prepare`, whose module explains kv_len, device,
series and context) and works on its ``status == "ok"`` rows, except where points that did not
fit in memory are the point (:func:`memory_limits`, :func:`crossover`). Slopes are fitted per
(context, series, pass) by :func:`harness.analysis.fits.fit_scaling`, whose module says what a
slope describes (the asymptote, over which range) and when it is flagged as curved or flat.

Several rows at one kv_len within a series (seeds, input temperatures) are reduced to their
median before fitting, so a slope's confidence interval reflects the spread across lengths and
is not narrowed by replicates that only differ in inputs that do not affect time.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis.fits import ScalingFit, fit_scaling
from harness.analysis.series import (
    CONTEXT_KEYS,
    SERIES_KEYS,
    inputs_keys,
    most_common_inputs,
    per_kv_len,
    prepare,
)

#: Baselines of the summary table's crossover columns.
BASELINES: tuple[str, ...] = ("full", "sdpa")


# -------------------------------------------------------------------------------- slopes
#: Columns of one fit (:class:`harness.analysis.fits.ScalingFit`) in the slopes tables.
FIT_COLUMNS: list[str] = list(ScalingFit.__dataclass_fields__)


def _slopes(df: pd.DataFrame, metric: str, pass_: str) -> pd.DataFrame:
    df = prepare(df)
    rows = df[df["pass"] == pass_]
    out = []
    for key, group in rows.groupby(SERIES_KEYS, sort=True, dropna=False):
        per_len = per_kv_len(group, metric)
        fit = fit_scaling(per_len.index.to_numpy(), per_len.to_numpy())
        out.append(dict(zip(SERIES_KEYS, key), **fit.as_dict()))
    return pd.DataFrame(out, columns=SERIES_KEYS + FIT_COLUMNS)


def time_slopes(df: pd.DataFrame, pass_: str = "fwd") -> pd.DataFrame:
    """How ``time_ms`` grows with kv_len per series (:func:`harness.analysis.fits.fit_scaling`).

    Returns:
        One row per (context, series): :data:`SERIES_KEYS` and the fit's fields
        (:data:`FIT_COLUMNS`: ``slope``, ``ci_low``, ``ci_high``, ``method``, ``range_low``,
        ``range_high``, ``curved``, ``n_lengths``, ``constant``, ``note``, ``flat``: nothing
        measurably grows, slope 0).
    """
    return _slopes(df, "time_ms", pass_)


def memory_slopes(df: pd.DataFrame, pass_: str = "fwd") -> pd.DataFrame:
    """How ``peak_mem_bytes`` grows with kv_len per series; as :func:`time_slopes`.

    Points whose measured peak is zero (below the allocator's resolution) are left out, since
    their logarithm is undefined.
    """
    return _slopes(df, "peak_mem_bytes", pass_)


# ------------------------------------------------------------------------------- crossover
#: Statuses of points that did not fit: a real allocation failure, or refused by the estimate.
DID_NOT_FIT: tuple[str, ...] = ("oom", "over_budget")


def _resolve(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows of a series label, or of every series of a variant name."""
    rows = df[df["series"] == name]
    return rows if len(rows) else df[df["variant"] == name]


def _metric_curve(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Per kv_len the metric, +inf where the point did not fit in memory (and never ran ok).

    Where ``name`` covers several series (e.g. ``sdpa`` with several backends), the best
    (smallest) of them is taken at each length: "faster than sdpa" means faster than any of it.
    """
    curves = []
    for _, series_rows in rows.groupby("series"):
        ok = per_kv_len(series_rows, metric)
        failed = series_rows.loc[series_rows["status"].isin(DID_NOT_FIT), "kv_len"].unique()
        failed_curve = pd.Series(np.inf, index=sorted(set(failed) - set(ok.index)), dtype=float)
        curves.append(pd.concat([ok.astype(float), failed_curve]).sort_index())
    if not curves:
        return pd.Series(dtype=float)
    return pd.concat(curves, axis=1).min(axis=1).sort_index()


def crossover_point(
    df: pd.DataFrame, variant: str, baseline: str, metric: str = "time_ms", pass_: str = "fwd"
) -> tuple[float, bool] | None:
    """:func:`crossover` and whether it is only an upper bound: ``(kv_len, at_start)``.

    ``at_start`` is True when the variant is already smaller at the smallest length both were
    measured at: the crossover lies at or below that length, which is all the data say.
    """
    df = prepare(df)
    rows = df[df["pass"] == pass_]
    contexts = rows[CONTEXT_KEYS].drop_duplicates()
    if len(contexts) > 1:
        raise ValueError(
            f"crossover: rows from {len(contexts)} contexts (device, dtype, causal, shape); "
            "filter to one first"
        )
    mine = _resolve(rows, variant)
    if mine["series"].nunique() > 1:
        raise ValueError(
            f"crossover: variant {variant!r} has several series "
            f"({', '.join(sorted(mine['series'].unique()))}); pass one of them"
        )
    v = _metric_curve(mine, metric)
    b = _metric_curve(_resolve(rows, baseline), metric)
    common = v.index.intersection(b.index)
    v, b = v.loc[common], b.loc[common]
    both_failed = np.isinf(v) & np.isinf(b)
    v, b = v[~both_failed], b[~both_failed]
    if not len(v):
        return None
    smaller = (v < b).to_numpy()
    if not smaller[-1]:
        return None
    j = len(smaller)
    while j > 0 and smaller[j - 1]:
        j -= 1
    lengths = v.index.to_numpy(dtype=float)
    if j == 0:
        return float(lengths[0]), True
    pair = np.array([v.iloc[j - 1], b.iloc[j - 1], v.iloc[j], b.iloc[j]])
    if not np.all(np.isfinite(pair)):
        return float(lengths[j]), False
    d0 = math.log(pair[0] / pair[1])  # >= 0: not smaller
    d1 = math.log(pair[2] / pair[3])  # < 0: smaller
    frac = d0 / (d0 - d1)
    x0, x1 = math.log(lengths[j - 1]), math.log(lengths[j])
    return float(math.exp(x0 + frac * (x1 - x0))), False


def crossover(
    df: pd.DataFrame, variant: str, baseline: str, metric: str = "time_ms", pass_: str = "fwd"
) -> float | None:
    """The kv_len from which ``variant`` is smaller than ``baseline`` in ``metric``, and stays so.

    Over the kv_lens both were measured at (ok, oom or over budget; a point that did not fit
    counts as infinitely slow/large, so a variant that still runs where the baseline did not
    fit wins there), let ``j`` be the first length from which the variant is smaller at every
    larger length. The crossover is interpolated in log-log space between length ``j-1``
    (variant not smaller) and ``j``: the point where the straight line through the two
    log-ratios crosses zero. If either value at those two lengths did not fit, it cannot be
    interpolated and length ``j`` is returned.

    Args:
        df: Rows of one context (device, dtype, causal, shape); several contexts raise
            ``ValueError``, since a crossover between two machines means nothing.
        variant: A series label (``"sdpa(backend=math)"``) or a variant name with one series.
        baseline: A series label or variant name; a name with several series takes, at each
            length, the smallest of them.
        metric: ``"time_ms"`` (faster) or ``"peak_mem_bytes"`` (smaller).
        pass_: Which pass's rows.

    Returns:
        The crossover kv_len; the smallest common length when the variant is smaller from the
        start (the crossover lies at or below it: :func:`crossover_point` says which); ``None``
        when it never becomes smaller and stays so, or when the two share no measured length.
    """
    point = crossover_point(df, variant, baseline, metric, pass_)
    return None if point is None else point[0]


# ---------------------------------------------------------------------------- memory limits
def memory_limits(df: pd.DataFrame, pass_: str | None = "fwd") -> pd.DataFrame:
    """Per series, the largest kv_len that ran before the first point that did not fit.

    A point does not fit when it ran out of memory (``oom``, a real allocation failure) or was
    refused by the analytic estimate (``over_budget``, with ``memory_budget_bytes``).

    Args:
        df: Rows.
        pass_: Which pass's rows (``None``: every pass, so a limit in ``fwd_bwd`` counts).

    Returns:
        One row per (context, series): ``max_ok_kv_len`` (largest ok length below the first
        limit, or the largest ok length when none was hit; NaN when nothing ran),
        ``first_oom_kv_len`` and ``first_over_budget_kv_len`` (NaN when none), ``limit``
        (``"oom"``, ``"over_budget"`` or ``""``: which was hit first) and
        ``memory_budget_bytes`` (the budget of the over-budget rows; NaN when unknown).
    """
    df = prepare(df)
    rows = df if pass_ is None else df[df["pass"] == pass_]
    out = []
    for key, group in rows.groupby(SERIES_KEYS, sort=True, dropna=False):
        first = {}
        for status in DID_NOT_FIT:
            failed = group.loc[group["status"] == status, "kv_len"]
            first[status] = float(failed.min()) if len(failed) else math.inf
        limit = min(DID_NOT_FIT, key=lambda s: first[s])
        ok = group.loc[(group["status"] == "ok") & (group["kv_len"] < first[limit]), "kv_len"]
        budget = group.loc[group["status"] == "over_budget", "memory_budget_bytes"].dropna()
        out.append(
            dict(
                zip(SERIES_KEYS, key),
                max_ok_kv_len=float(ok.max()) if len(ok) else math.nan,
                first_oom_kv_len=first["oom"] if first["oom"] < math.inf else math.nan,
                first_over_budget_kv_len=(
                    first["over_budget"] if first["over_budget"] < math.inf else math.nan
                ),
                limit=limit if first[limit] < math.inf else "",
                memory_budget_bytes=float(budget.median()) if len(budget) else math.nan,
            )
        )
    cols = ["max_ok_kv_len", "first_oom_kv_len", "first_over_budget_kv_len", "limit"]
    return pd.DataFrame(out, columns=SERIES_KEYS + cols + ["memory_budget_bytes"])


# -------------------------------------------------------------------------------- summary
def default_reference_kv_len(df: pd.DataFrame, pass_: str = "fwd") -> float | None:
    """The largest kv_len at which the most series ran ok (so the most rows are comparable)."""
    df = prepare(df)
    ok = df[(df["status"] == "ok") & (df["pass"] == pass_)]
    if not len(ok):
        return None
    counts = ok.groupby("kv_len")["series"].nunique()
    best = counts[counts == counts.max()]
    return float(best.index.max())


def _fit_columns(prefix: str, fit: pd.Series) -> dict[str, Any]:
    """A slopes-table row as summary columns ``<prefix>_slope``, ``<prefix>_ci_low``, ..."""
    return {f"{prefix}_{c}": fit[c] for c in FIT_COLUMNS}


def _crossovers(ctx_rows: pd.DataFrame, series: str, variant: str, pass_: str) -> dict:
    """``<time|mem>_cross_<b>`` and ``..._at_start`` for each baseline of :data:`BASELINES`."""
    row: dict[str, Any] = {}
    for base in BASELINES:
        for metric, prefix in (("time_ms", "time"), ("peak_mem_bytes", "mem")):
            point = None
            if variant != base and (ctx_rows["variant"] == base).any():
                point = crossover_point(ctx_rows, series, base, metric, pass_)
            row[f"{prefix}_cross_{base}"] = math.nan if point is None else point[0]
            row[f"{prefix}_cross_{base}_at_start"] = point is not None and point[1]
    return row


def _median(rows: pd.DataFrame, column: str) -> float:
    values = rows[column].dropna()
    return float(values.median()) if len(values) else math.nan


def summary_table(
    df: pd.DataFrame, reference_kv_len: float | None = None, pass_: str = "fwd"
) -> pd.DataFrame:
    """One row per (context, series): the numbers a reader compares variants by.

    Columns: :data:`SERIES_KEYS`; ``time_<f>`` and ``mem_<f>`` for each fit field ``f`` of
    :data:`FIT_COLUMNS` (``time_slope``, ``time_ci_low``, ``time_ci_high``, ``time_method``,
    ``time_range_low``, ...; see :func:`harness.analysis.fits.fit_scaling`); ``time_cross_<b>``
    and ``mem_cross_<b>`` for each baseline ``b`` in :data:`BASELINES` (see :func:`crossover`;
    NaN when never, or for the baseline itself or when the baseline was not run) with
    ``..._at_start`` (True: smaller from the first common length, so the crossover is at or
    below it); the columns of :func:`memory_limits`; ``reference_kv_len``; ``error_inputs`` and
    ``error_inputs_params`` (the most common inputs setting among the context's errors at that
    length: errors are read on it alone, never pooled across inputs); ``rel_err`` and
    ``uniform_rel_err`` (medians over the series' ok rows on those inputs at that length of
    ``rel_err`` and of ``baseline_uniform_rel_err``, the error of uniform attention on the same
    inputs); ``tflops`` and ``rate_frac`` (achieved TFLOP/s and its fraction of the device's
    measured matmul rate, medians at that length).

    Args:
        df: Rows (any number of devices and contexts).
        reference_kv_len: Length at which error and rate are read; default
            :func:`default_reference_kv_len` per context.
        pass_: Pass whose rows are summarised.
    """
    df = prepare(df)
    times = time_slopes(df, pass_).set_index(SERIES_KEYS)
    mems = memory_slopes(df, pass_).set_index(SERIES_KEYS)
    limits = memory_limits(df, pass_).set_index(SERIES_KEYS)
    rows = []
    for ctx, ctx_rows in df[df["pass"] == pass_].groupby(CONTEXT_KEYS, sort=True, dropna=False):
        ref = reference_kv_len
        if ref is None:
            ref = default_reference_kv_len(ctx_rows, pass_)
        with_err = ctx_rows[(ctx_rows["kv_len"] == ref) & ctx_rows["rel_err"].notna()]
        with_err = most_common_inputs(with_err[with_err["status"] == "ok"])
        error_inputs = inputs_keys(with_err).iloc[0] if len(with_err) else ""
        inputs = {
            "error_inputs": with_err["inputs"].iloc[0] if len(with_err) else None,
            "error_inputs_params": with_err["inputs_params"].iloc[0] if len(with_err) else {},
        }
        for (series, variant), s_rows in ctx_rows.groupby(["series", "variant"], sort=True):
            key = tuple(ctx) + (series, variant)
            row: dict[str, Any] = dict(zip(SERIES_KEYS, key))
            row.update(_fit_columns("time", times.loc[key]))
            row.update(_fit_columns("mem", mems.loc[key]))
            row.update(_crossovers(ctx_rows, series, variant, pass_))
            row.update(limits.loc[key].to_dict())
            at_ref = s_rows[(s_rows["status"] == "ok") & (s_rows["kv_len"] == ref)]
            errors = at_ref[inputs_keys(at_ref) == error_inputs] if len(at_ref) else at_ref
            row.update(
                reference_kv_len=ref if ref is not None else math.nan,
                **inputs,
                rel_err=_median(errors, "rel_err"),
                uniform_rel_err=_median(errors, "baseline_uniform_rel_err"),
                tflops=_median(at_ref, "tflops"),
                rate_frac=_median(
                    at_ref.assign(r=at_ref["tflops"] / at_ref["matmul_tflops"]), "r"
                ),
            )
            rows.append(row)
    return pd.DataFrame(rows)
