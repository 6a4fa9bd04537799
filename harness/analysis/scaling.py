"""Scaling analysis over result rows: log-log slopes, crossovers, oom limits, the summary table.

Every function takes a pandas DataFrame of rows (the columns of :data:`harness.analysis.rows.COLUMNS`,
as :func:`harness.analysis.rows.read_rows` returns them) and works on its ``status == "ok"`` rows,
except where oom points are the point (:func:`max_seq_len_before_oom`, :func:`crossover`).

Vocabulary used throughout:

* **seq_len** is ``kv_len`` (the length a variant is built for, ``seq_len=kv_len`` in run.py),
  falling back to ``q_len`` where ``kv_len`` is missing.
* **device** is ``"<device_name or device> @ <host>"``: two hosts with the same GPU model are
  two devices, because their numbers must not be pooled.
* **series** is one configuration of one variant: the variant name, plus the parameters that
  take more than one value among that variant's rows, e.g. ``sdpa(backend=math)`` next to
  ``sdpa(backend=flash)``, or just ``performer`` when every performer row has the same params.
* **context** is what must be equal for two numbers to be comparable: device, dtype, causal,
  batch, heads and head_dim. Slopes are fitted per (context, series, pass).

Several rows at one seq_len within a series (seeds, input temperatures) are reduced to their
median before fitting, so a slope's confidence interval reflects the spread across lengths and
is not narrowed by replicates that only differ in inputs that do not affect time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

#: Columns that make two rows comparable (see the module docstring).
CONTEXT_KEYS: list[str] = ["device_key", "dtype", "causal", "batch", "heads", "head_dim"]
#: Grouping of one fitted line.
SERIES_KEYS: list[str] = CONTEXT_KEYS + ["series", "variant"]
#: Baselines of the summary table's crossover columns.
BASELINES: tuple[str, ...] = ("full", "sdpa")

_NUMERIC = [
    "batch",
    "heads",
    "q_len",
    "kv_len",
    "head_dim",
    "seed",
    "time_ms",
    "time_iqr_ms",
    "peak_mem_bytes",
    "analytic_mem_bytes",
    "flops",
    "tflops",
    "matmul_tflops",
    "rel_err",
    "rel_err_std",
    "max_abs_err",
    "cosine",
    "grad_rel_err",
    "attn_kl",
    "attn_tv",
    "setup_ms",
]


# --------------------------------------------------------------------------------- statistics
def _t_two_sided_mass(t: float, dof: int) -> float:
    """P(|T| < t) for Student's t with an integer number of degrees of freedom.

    Closed form of Abramowitz & Stegun 26.7.3-4 (finite sums in cos(theta)), exact for integer
    ``dof``, which is all a least-squares fit with ``m`` points (``dof = m - 2``) needs.
    """
    theta = math.atan(t / math.sqrt(dof))
    c2 = math.cos(theta) ** 2
    if dof % 2 == 1:
        if dof == 1:
            return 2.0 * theta / math.pi
        term, total = 1.0, 1.0
        for j in range(1, (dof - 3) // 2 + 1):
            term *= c2 * (2 * j) / (2 * j + 1)
            total += term
        return 2.0 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    term, total = 1.0, 1.0
    for j in range(1, (dof - 2) // 2 + 1):
        term *= c2 * (2 * j - 1) / (2 * j)
        total += term
    return math.sin(theta) * total


def t_quantile(p: float, dof: int) -> float:
    """Quantile ``p`` (in (0.5, 1)) of Student's t with ``dof`` degrees of freedom.

    Bisection on the closed-form CDF, so scipy is not needed; accurate to ~1e-10.

    Args:
        p: Probability, e.g. 0.975 for a two-sided 95% interval.
        dof: Degrees of freedom, a positive integer.
    """
    if not 0.5 < p < 1.0:
        raise ValueError(f"t_quantile: p={p} must be in (0.5, 1)")
    if dof < 1 or int(dof) != dof:
        raise ValueError(f"t_quantile: dof={dof} must be a positive integer")
    target = 2.0 * p - 1.0  # two-sided mass inside (-t, t)
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, int(dof)) < target:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_two_sided_mass(mid, int(dof)) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def fit_slope(
    seq_lens: Sequence[float], values: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """Log-log least-squares slope of ``values`` against ``seq_lens`` with a confidence interval.

    ``values = c * seq_len ** slope`` gives ``slope`` exactly. The interval is the usual OLS one,
    ``slope +- t_{(1+confidence)/2, m-2} * se``, with ``se`` from the residuals.

    Args:
        seq_lens: Sequence lengths (positive).
        values: Measured values (positive); non-positive or non-finite pairs are dropped because
            their logarithm is undefined.
        confidence: Two-sided confidence level of the interval.

    Returns:
        ``(slope, ci_low, ci_high)``. With fewer than two distinct lengths all three are NaN;
        with exactly two points the slope is defined but the interval is NaN (no residual
        degrees of freedom).
    """
    x = np.asarray(seq_lens, dtype=float)
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
def parse_params(value: Any) -> dict[str, Any]:
    """A row's ``params`` / ``inputs_params`` as a dict (accepts dicts, JSON text, None, NaN)."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return {}
        return dict(parsed) if isinstance(parsed, Mapping) else {}
    return {}


def _fmt_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


#: Constructor parameters that restate the point's shape (every variant is built for the point's
#: ``seq_len`` and ``head_dim``): never part of a series label, or each length would be a series.
SHAPE_PARAMS = frozenset({"seq_len", "kv_len", "q_len", "head_dim"})


def series_labels(
    df: pd.DataFrame, ignore: Mapping[str, Iterable[str]] | None = None
) -> pd.Series:
    """The series label of every row: variant name plus its distinguishing params.

    A parameter is distinguishing when it takes more than one value among the rows of that
    variant in ``df`` (a missing key counts as a value), so ``sdpa(backend=math)`` and
    ``sdpa(backend=flash)`` are two series while a variant run with one configuration is just
    its name. Shape parameters (:data:`SHAPE_PARAMS`) never count. Labels depend on the whole
    frame, so compute them once on all rows (:func:`prepare` does) and keep them when slicing.

    Args:
        df: Rows with ``variant`` and ``params``.
        ignore: Per variant, parameter names left out of the label (e.g. the knob, to draw a
            variant's error against its knob as one line).
    """
    ignore = {k: set(v) for k, v in (ignore or {}).items()}
    params = df["params"].map(parse_params)
    labels = pd.Series(index=df.index, dtype=object)
    for variant, idx in df.groupby(df["variant"].astype(str), sort=False).groups.items():
        dicts = params.loc[idx]
        keys = sorted({k for d in dicts for k in d} - ignore.get(variant, set()) - SHAPE_PARAMS)
        varying = [
            k for k in keys if len({json.dumps(d.get(k), sort_keys=True) for d in dicts}) > 1
        ]
        for i in idx:
            d = dicts.loc[i]
            parts = [f"{k}={_fmt_value(d.get(k))}" for k in varying]
            labels.loc[i] = f"{variant}({', '.join(parts)})" if parts else variant
    return labels


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


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with the derived columns every function here uses.

    Adds ``seq_len``, ``device_key`` and ``series``; converts numeric columns (rows read back
    from CSV carry strings and NaN); fills missing ``dtype``/``causal`` so that grouping does not
    drop rows. Idempotent: a frame that already has ``series`` is returned unchanged (copied).
    """
    out = df.copy()
    if "series" in out.columns and "device_key" in out.columns and "seq_len" in out.columns:
        return out
    for col in _NUMERIC:
        if col in out.columns:
            out[col] = pd.to_numeric(out[col], errors="coerce")
    kv = out["kv_len"] if "kv_len" in out.columns else pd.Series(np.nan, index=out.index)
    q = out["q_len"] if "q_len" in out.columns else pd.Series(np.nan, index=out.index)
    out["seq_len"] = kv.fillna(q)
    if "causal" in out.columns:
        out["causal"] = out["causal"].map(
            lambda c: c if isinstance(c, bool) else str(c).strip().lower() in ("true", "1")
        )
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


def _per_seq_len(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Median of positive, finite ``metric`` per seq_len over ``ok`` rows (sorted by seq_len)."""
    ok = rows[(rows["status"] == "ok") & np.isfinite(rows[metric].astype(float))]
    ok = ok[ok[metric] > 0]
    return ok.groupby("seq_len")[metric].median().sort_index()


# -------------------------------------------------------------------------------- slopes
def _slopes(df: pd.DataFrame, metric: str, pass_: str) -> pd.DataFrame:
    df = prepare(df)
    rows = df[df["pass"] == pass_]
    out = []
    for key, group in rows.groupby(SERIES_KEYS, sort=True, dropna=False):
        per_len = _per_seq_len(group, metric)
        slope, lo, hi = fit_slope(per_len.index.to_numpy(), per_len.to_numpy())
        out.append(
            dict(zip(SERIES_KEYS, key), slope=slope, ci_low=lo, ci_high=hi, n_lengths=len(per_len))
        )
    cols = SERIES_KEYS + ["slope", "ci_low", "ci_high", "n_lengths"]
    return pd.DataFrame(out, columns=cols)


def time_slopes(df: pd.DataFrame, pass_: str = "fwd") -> pd.DataFrame:
    """Log-log slope of ``time_ms`` against seq_len per series (see :func:`fit_slope`).

    Returns:
        One row per (context, series): :data:`SERIES_KEYS`, ``slope``, ``ci_low``, ``ci_high``
        and ``n_lengths`` (distinct seq_lens that went into the fit).
    """
    return _slopes(df, "time_ms", pass_)


def memory_slopes(df: pd.DataFrame, pass_: str = "fwd") -> pd.DataFrame:
    """Log-log slope of ``peak_mem_bytes`` against seq_len per series; as :func:`time_slopes`.

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
    """Per seq_len the metric, +inf where the point ran out of memory (and never ran ok).

    Where ``name`` covers several series (e.g. ``sdpa`` with several backends), the best
    (smallest) of them is taken at each length: "faster than sdpa" means faster than any of it.
    """
    curves = []
    for _, series_rows in rows.groupby("series"):
        ok = _per_seq_len(series_rows, metric)
        oom = series_rows.loc[series_rows["status"] == "oom", "seq_len"].unique()
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
    """The seq_len from which ``variant`` is smaller than ``baseline`` in ``metric``, and stays so.

    Over the seq_lens both were measured at (ok or oom; an oom counts as infinitely slow/large,
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
        The crossover seq_len; the smallest measured length when the variant is smaller from
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
def max_seq_len_before_oom(df: pd.DataFrame, pass_: str | None = "fwd") -> pd.DataFrame:
    """Per series, the largest seq_len that ran before the first out-of-memory point.

    Args:
        df: Rows.
        pass_: Which pass's rows (``None``: every pass, so an oom in ``fwd_bwd`` counts).

    Returns:
        One row per (context, series) with ``max_ok_seq_len`` (largest ok length below the
        first oom, or the largest ok length when nothing ran out of memory; NaN when nothing ran)
        and ``first_oom_seq_len`` (NaN when nothing ran out of memory).
    """
    df = prepare(df)
    rows = df if pass_ is None else df[df["pass"] == pass_]
    out = []
    for key, group in rows.groupby(SERIES_KEYS, sort=True, dropna=False):
        oom = group.loc[group["status"] == "oom", "seq_len"]
        first_oom = float(oom.min()) if len(oom) else float("nan")
        ok = group.loc[group["status"] == "ok", "seq_len"]
        if len(oom):
            ok = ok[ok < first_oom]
        out.append(
            dict(
                zip(SERIES_KEYS, key),
                max_ok_seq_len=float(ok.max()) if len(ok) else float("nan"),
                first_oom_seq_len=first_oom,
            )
        )
    return pd.DataFrame(out, columns=SERIES_KEYS + ["max_ok_seq_len", "first_oom_seq_len"])


# -------------------------------------------------------------------------------- summary
def default_reference_seq_len(df: pd.DataFrame, pass_: str = "fwd") -> float | None:
    """The largest seq_len at which the most series ran ok (so the most rows are comparable)."""
    df = prepare(df)
    ok = df[(df["status"] == "ok") & (df["pass"] == pass_)]
    if not len(ok):
        return None
    counts = ok.groupby("seq_len")["series"].nunique()
    best = counts[counts == counts.max()]
    return float(best.index.max())


def summary_table(
    df: pd.DataFrame, reference_seq_len: float | None = None, pass_: str = "fwd"
) -> pd.DataFrame:
    """One row per (context, series): the numbers a reader compares variants by.

    Columns: :data:`SERIES_KEYS`; ``time_slope``/``time_ci_low``/``time_ci_high`` and
    ``mem_slope``/``mem_ci_low``/``mem_ci_high`` (95% CIs); ``time_cross_<b>`` and
    ``mem_cross_<b>`` for each baseline ``b`` in :data:`BASELINES` (see :func:`crossover`;
    NaN when never, or for the baseline itself or when the baseline was not run);
    ``max_ok_seq_len`` and ``first_oom_seq_len`` (see :func:`max_seq_len_before_oom`);
    ``reference_seq_len``; ``rel_err`` (median over the series' ok rows at that length, e.g.
    across input temperatures); ``tflops`` and ``rate_frac`` (achieved TFLOP/s and its fraction
    of the device's measured matmul rate, medians at that length).

    Args:
        df: Rows (any number of devices and contexts).
        reference_seq_len: Length at which error and rate are read; default
            :func:`default_reference_seq_len` per context.
        pass_: Pass whose rows are summarised.
    """
    df = prepare(df)
    times = time_slopes(df, pass_).set_index(SERIES_KEYS)
    mems = memory_slopes(df, pass_).set_index(SERIES_KEYS)
    ooms = max_seq_len_before_oom(df, pass_).set_index(SERIES_KEYS)
    rows = []
    for ctx, ctx_rows in df[df["pass"] == pass_].groupby(CONTEXT_KEYS, sort=True, dropna=False):
        ref = reference_seq_len
        if ref is None:
            ref = default_reference_seq_len(ctx_rows, pass_)
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
            at_ref = s_rows[(s_rows["status"] == "ok") & (s_rows["seq_len"] == ref)]
            rate = at_ref["tflops"] / at_ref["matmul_tflops"]
            row.update(
                reference_seq_len=ref if ref is not None else float("nan"),
                rel_err=float(at_ref["rel_err"].median()) if len(at_ref) else float("nan"),
                tflops=float(at_ref["tflops"].median()) if len(at_ref) else float("nan"),
                rate_frac=float(rate.median()) if rate.notna().any() else float("nan"),
            )
            rows.append(row)
    return pd.DataFrame(rows)
