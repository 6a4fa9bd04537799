"""Scaling analysis over result rows: log-log slopes, crossovers, oom limits, the summary table.

Every function takes a pandas DataFrame of rows (the columns of
:data:`harness.analysis.rows.COLUMNS`, as :func:`harness.analysis.rows.read_rows` returns them),
prepares it (:func:`harness.analysis.series.prepare`, whose module explains kv_len, device,
series and context) and works on its ``status == "ok"`` rows, except where oom points are the
point (:func:`max_kv_len_before_oom`, :func:`crossover`). Slopes are fitted per (context,
series, pass).

Several rows at one kv_len within a series (seeds, input temperatures) are reduced to their
median before fitting, so a slope's confidence interval reflects the spread across lengths and
is not narrowed by replicates that only differ in inputs that do not affect time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from harness.analysis.series import CONTEXT_KEYS, SERIES_KEYS, per_kv_len, prepare

#: Baselines of the summary table's crossover columns.
BASELINES: tuple[str, ...] = ("full", "sdpa")


# --------------------------------------------------------------------------------- statistics
def t_quantile(p: float, dof: int) -> float:
    """Quantile ``p`` (in (0.5, 1)) of Student's t with ``dof`` degrees of freedom (scipy).

    Args:
        p: Probability, e.g. 0.975 for a two-sided 95% interval.
        dof: Degrees of freedom, a positive integer.
    """
    if not 0.5 < p < 1.0:
        raise ValueError(f"t_quantile: p={p} must be in (0.5, 1)")
    if dof < 1 or int(dof) != dof:
        raise ValueError(f"t_quantile: dof={dof} must be a positive integer")
    return float(student_t.ppf(p, int(dof)))


def fit_slope(
    kv_lens: Sequence[float], values: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """Log-log least-squares slope of ``values`` against ``kv_lens`` with a confidence interval.

    ``values = c * kv_len ** slope`` gives ``slope`` exactly. The interval is the usual OLS one,
    ``slope +- t_{(1+confidence)/2, m-2} * se``, with ``se`` from the residuals.

    Args:
        kv_lens: Sequence (key) lengths, positive.
        values: Measured values (positive); non-positive or non-finite pairs are dropped because
            their logarithm is undefined.
        confidence: Two-sided confidence level of the interval.

    Returns:
        ``(slope, ci_low, ci_high)``. With fewer than two distinct lengths all three are NaN;
        with exactly two points the slope is defined but the interval is NaN (no residual
        degrees of freedom).
    """
    x = np.asarray(kv_lens, dtype=float)
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = np.log(x[keep]), np.log(y[keep])
    nan = float("nan")
    if len(np.unique(x)) < 2:
        return nan, nan, nan
    x_mean = x.mean()
    sxx = float(((x - x_mean) ** 2).sum())
    slope = float(((x - x_mean) * (y - y.mean())).sum() / sxx)
    dof = len(x) - 2
    if dof < 1:
        return slope, nan, nan
    intercept = y.mean() - slope * x_mean
    residual_var = float(((y - intercept - slope * x) ** 2).sum()) / dof
    half = t_quantile(0.5 + confidence / 2.0, dof) * math.sqrt(residual_var / sxx)
    return slope, slope - half, slope + half


# ---------------------------------------------------------------------------- row preparation
# -------------------------------------------------------------------------------- slopes
def _slopes(df: pd.DataFrame, metric: str, pass_: str) -> pd.DataFrame:
    df = prepare(df)
    rows = df[df["pass"] == pass_]
    out = []
    for key, group in rows.groupby(SERIES_KEYS, sort=True, dropna=False):
        per_len = per_kv_len(group, metric)
        slope, lo, hi = fit_slope(per_len.index.to_numpy(), per_len.to_numpy())
        out.append(
            dict(zip(SERIES_KEYS, key), slope=slope, ci_low=lo, ci_high=hi, n_lengths=len(per_len))
        )
    cols = SERIES_KEYS + ["slope", "ci_low", "ci_high", "n_lengths"]
    return pd.DataFrame(out, columns=cols)


def time_slopes(df: pd.DataFrame, pass_: str = "fwd") -> pd.DataFrame:
    """Log-log slope of ``time_ms`` against kv_len per series (see :func:`fit_slope`).

    Returns:
        One row per (context, series): :data:`SERIES_KEYS`, ``slope``, ``ci_low``, ``ci_high``
        and ``n_lengths`` (distinct kv_lens that went into the fit).
    """
    return _slopes(df, "time_ms", pass_)


def memory_slopes(df: pd.DataFrame, pass_: str = "fwd") -> pd.DataFrame:
    """Log-log slope of ``peak_mem_bytes`` against kv_len per series; as :func:`time_slopes`.

    Points whose measured peak is zero (below the allocator's resolution) are left out, since
    their logarithm is undefined.
    """
    return _slopes(df, "peak_mem_bytes", pass_)


# ------------------------------------------------------------------------------- crossover
def _resolve(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows of a series label, or of every series of a variant name."""
    rows = df[df["series"] == name]
    return rows if len(rows) else df[df["variant"] == name]


def _metric_curve(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Per kv_len the metric, +inf where the point ran out of memory (and never ran ok).

    Where ``name`` covers several series (e.g. ``sdpa`` with several backends), the best
    (smallest) of them is taken at each length: "faster than sdpa" means faster than any of it.
    """
    curves = []
    for _, series_rows in rows.groupby("series"):
        ok = per_kv_len(series_rows, metric)
        oom = series_rows.loc[series_rows["status"] == "oom", "kv_len"].unique()
        oom_curve = pd.Series(np.inf, index=sorted(set(oom) - set(ok.index)), dtype=float)
        curves.append(pd.concat([ok.astype(float), oom_curve]).sort_index())
    if not curves:
        return pd.Series(dtype=float)
    return pd.concat(curves, axis=1).min(axis=1).sort_index()


def crossover(
    df: pd.DataFrame,
    variant: str,
    baseline: str,
    metric: str = "time_ms",
    pass_: str = "fwd",
) -> float | None:
    """The kv_len from which ``variant`` is smaller than ``baseline`` in ``metric``, and stays so.

    Over the kv_lens both were measured at (ok or oom; an oom counts as infinitely slow/large,
    so a variant that still runs where the baseline ran out of memory wins there), let ``j`` be
    the first length from which the variant is smaller at every larger length. The crossover is
    interpolated in log-log space between length ``j-1`` (variant not smaller) and ``j``: the
    point where the straight line through the two log-ratios crosses zero. If either value at
    those two lengths is an oom, it cannot be interpolated and length ``j`` is returned.

    Args:
        df: Rows of one context (device, dtype, causal, shape); several contexts raise
            ``ValueError``, since a crossover between two machines means nothing.
        variant: A series label (``"sdpa(backend=math)"``) or a variant name with one series.
        baseline: A series label or variant name; a name with several series takes, at each
            length, the smallest of them.
        metric: ``"time_ms"`` (faster) or ``"peak_mem_bytes"`` (smaller).
        pass_: Which pass's rows.

    Returns:
        The crossover kv_len; the smallest measured length when the variant is smaller from
        the start (the crossover lies at or below it); ``None`` when it never becomes smaller
        and stays so, or when the two share no measured length.
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
    both_oom = np.isinf(v) & np.isinf(b)
    v, b = v[~both_oom], b[~both_oom]
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
        return float(lengths[0])
    pair = np.array([v.iloc[j - 1], b.iloc[j - 1], v.iloc[j], b.iloc[j]])
    if not np.all(np.isfinite(pair)):
        return float(lengths[j])
    d0 = math.log(pair[0] / pair[1])  # >= 0: not smaller
    d1 = math.log(pair[2] / pair[3])  # < 0: smaller
    frac = d0 / (d0 - d1)
    x0, x1 = math.log(lengths[j - 1]), math.log(lengths[j])
    return float(math.exp(x0 + frac * (x1 - x0)))


# ------------------------------------------------------------------------------------ oom
def max_kv_len_before_oom(df: pd.DataFrame, pass_: str | None = "fwd") -> pd.DataFrame:
    """Per series, the largest kv_len that ran before the first out-of-memory point.

    Args:
        df: Rows.
        pass_: Which pass's rows (``None``: every pass, so an oom in ``fwd_bwd`` counts).

    Returns:
        One row per (context, series) with ``max_ok_kv_len`` (largest ok length below the
        first oom, or the largest ok length when nothing ran out of memory; NaN when nothing ran)
        and ``first_oom_kv_len`` (NaN when nothing ran out of memory).
    """
    df = prepare(df)
    rows = df if pass_ is None else df[df["pass"] == pass_]
    out = []
    for key, group in rows.groupby(SERIES_KEYS, sort=True, dropna=False):
        oom = group.loc[group["status"] == "oom", "kv_len"]
        first_oom = float(oom.min()) if len(oom) else float("nan")
        ok = group.loc[group["status"] == "ok", "kv_len"]
        if len(oom):
            ok = ok[ok < first_oom]
        out.append(
            dict(
                zip(SERIES_KEYS, key),
                max_ok_kv_len=float(ok.max()) if len(ok) else float("nan"),
                first_oom_kv_len=first_oom,
            )
        )
    return pd.DataFrame(out, columns=SERIES_KEYS + ["max_ok_kv_len", "first_oom_kv_len"])


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


def summary_table(
    df: pd.DataFrame, reference_kv_len: float | None = None, pass_: str = "fwd"
) -> pd.DataFrame:
    """One row per (context, series): the numbers a reader compares variants by.

    Columns: :data:`SERIES_KEYS`; ``time_slope``/``time_ci_low``/``time_ci_high`` and
    ``mem_slope``/``mem_ci_low``/``mem_ci_high`` (95% CIs); ``time_cross_<b>`` and
    ``mem_cross_<b>`` for each baseline ``b`` in :data:`BASELINES` (see :func:`crossover`;
    NaN when never, or for the baseline itself or when the baseline was not run);
    ``max_ok_kv_len`` and ``first_oom_kv_len`` (see :func:`max_kv_len_before_oom`);
    ``reference_kv_len``; ``rel_err`` (median over the series' ok rows at that length, e.g.
    across input temperatures); ``tflops`` and ``rate_frac`` (achieved TFLOP/s and its fraction
    of the device's measured matmul rate, medians at that length).

    Args:
        df: Rows (any number of devices and contexts).
        reference_kv_len: Length at which error and rate are read; default
            :func:`default_reference_kv_len` per context.
        pass_: Pass whose rows are summarised.
    """
    df = prepare(df)
    times = time_slopes(df, pass_).set_index(SERIES_KEYS)
    mems = memory_slopes(df, pass_).set_index(SERIES_KEYS)
    ooms = max_kv_len_before_oom(df, pass_).set_index(SERIES_KEYS)
    rows = []
    for ctx, ctx_rows in df[df["pass"] == pass_].groupby(CONTEXT_KEYS, sort=True, dropna=False):
        ref = reference_kv_len
        if ref is None:
            ref = default_reference_kv_len(ctx_rows, pass_)
        for (series, variant), s_rows in ctx_rows.groupby(["series", "variant"], sort=True):
            key = tuple(ctx) + (series, variant)
            row: dict[str, Any] = dict(zip(SERIES_KEYS, key))
            t, m = times.loc[key], mems.loc[key]
            row.update(time_slope=t["slope"], time_ci_low=t["ci_low"], time_ci_high=t["ci_high"])
            row.update(mem_slope=m["slope"], mem_ci_low=m["ci_low"], mem_ci_high=m["ci_high"])
            for base in BASELINES:
                for metric, prefix in (("time_ms", "time"), ("peak_mem_bytes", "mem")):
                    value = None
                    if variant != base and (ctx_rows["variant"] == base).any():
                        value = crossover(ctx_rows, series, base, metric, pass_)
                    row[f"{prefix}_cross_{base}"] = float("nan") if value is None else value
            row.update(ooms.loc[key].to_dict())
            at_ref = s_rows[(s_rows["status"] == "ok") & (s_rows["kv_len"] == ref)]
            rate = at_ref["tflops"] / at_ref["matmul_tflops"]
            row.update(
                reference_kv_len=ref if ref is not None else float("nan"),
                rel_err=float(at_ref["rel_err"].median()) if len(at_ref) else float("nan"),
                tflops=float(at_ref["tflops"].median()) if len(at_ref) else float("nan"),
                rate_frac=float(rate.median()) if rate.notna().any() else float("nan"),
            )
            rows.append(row)
    return pd.DataFrame(rows)
