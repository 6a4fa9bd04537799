"""How cost grows with length: the fits behind every slope the report prints.

A single power law fitted over 256..16384 treats curvature as noise: a fixed per-call cost
flattens the short lengths, so ``t = 5 + n/400`` (exactly linear work) fits as slope 0.50
[0.36, 0.65], an interval that excludes the true exponent. :func:`fit_scaling` therefore fits

    ``y = a + b * n ** p``  with ``a >= 0`` (a fixed cost per call) and ``b >= 0``,

over every measured length, in relative error (times and memory vary multiplicatively). The
constant takes the fixed cost, so ``p`` is the exponent of the part that grows: the asymptote.
Its 95% interval is the profile-likelihood one (the ``p`` whose best ``a``, ``b`` raise the
residual sum of squares by less than the F test allows), which follows the fit's real shape
instead of a linearisation.

Where that model does not describe the series either (its residuals still curve: a cache
cliff, ``n log n`` whose log-log slope keeps falling), the series is flagged ``curved`` and the
slope reported is the ordinary log-log slope over the largest :data:`TOP_LENGTHS` lengths, the
local slope at the top of the range; the range covered is always returned with the slope.

An interval needs :data:`MIN_CI_LENGTHS` lengths (three parameters and two degrees of freedom
left). With fewer, the log-log slope over all lengths is given without an interval, and the
fit's ``note`` says so: an interval from three points (``2.26 [-3.79, 8.31]``) says nothing.

A series in which nothing grows has no exponent: any ``p`` fits a constant plus a vanishing
term. So the full model is first tested against a constant (an F test at the fit's 95% level;
a series whose relative spread is below :data:`RESOLUTION` is constant to round-off and needs
no test). A series the full model does not fit significantly better is ``flat``: slope 0, with
the 95% interval of its log-log slope over all lengths (the growth the data leave room for).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import brentq, minimize_scalar, nnls
from scipy.stats import f as f_dist
from scipy.stats import t as student_t

#: Fewest distinct lengths for an interval on ``p`` (three parameters, two dof left).
MIN_CI_LENGTHS = 5
#: Lengths of the local (top-of-range) slope used where the residuals curve.
TOP_LENGTHS = 4
#: Exponents searched for ``p`` (an interval reaching an end is open there: +-inf).
P_RANGE = (-1.0, 4.0)
#: A curvature is flagged when the slope it implies changes by more than this across the range
#: (and it is significant at 95%): smaller bends do not change what a reader concludes.
CURVE_SLOPE_CHANGE = 0.05

#: Relative deviations below this are round-off, not measurement: far above float64 rounding
#: in the fit's arithmetic, far below the resolution of any timer or allocator.
RESOLUTION = 1e-9
#: The level of the test of growth against a constant (the level of the interval on ``p``).
LEVEL = 0.95
#: ``ScalingFit.note`` of a flat series.
NO_GROWTH = "no growth measured"

#: ``ScalingFit.method`` values.
ASYMPTOTIC, TOP, POWER = "a+b*n^p", "top", "power"


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


def _positive(kv_lens: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The pairs with finite, positive length and value (a logarithm needs both)."""
    x = np.asarray(kv_lens, dtype=float)
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    return x[keep], y[keep]


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
    x, y = _positive(kv_lens, values)
    x, y = np.log(x), np.log(y)
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


@dataclass(frozen=True)
class ScalingFit:
    """One series' growth with length (see the module docstring).

    Attributes:
        slope: ``p`` of ``a + b n^p`` (method ``a+b*n^p``), or the log-log slope over the top
            lengths (``top``) or over all lengths (``power``: too few lengths); 0 for a flat
            series (method ``power``); NaN with fewer than two lengths.
        ci_low: Lower end of the 95% interval (NaN: no interval; -inf: open).
        ci_high: Upper end (NaN: no interval; +inf: open).
        method: ``a+b*n^p``, ``top`` or ``power``.
        range_low: Smallest length the slope describes.
        range_high: Largest length the slope describes.
        curved: Whether the ``a + b n^p`` residuals curve (None: too few lengths to tell).
        n_lengths: Distinct lengths measured.
        constant: The fitted fixed cost ``a`` (method ``a+b*n^p``), the fitted level of a flat
            series, or NaN.
        note: Why there is no interval, when there is none; :data:`NO_GROWTH` when flat.
        flat: Whether nothing measurably grows (a constant fits as well as ``a + b n^p``).
    """

    slope: float
    ci_low: float
    ci_high: float
    method: str
    range_low: float
    range_high: float
    curved: bool | None
    n_lengths: int
    constant: float = float("nan")
    note: str = ""
    flat: bool = False

    def as_dict(self) -> dict[str, object]:
        """The fields by name (one row of a slopes table)."""
        return asdict(self)


def _profile(p: float, n: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Best ``a, b >= 0`` for exponent ``p`` in relative error: (residual sum of squares, [a, b]).

    Relative residuals ``(y - a - b n^p) / y`` make the problem linear in ``a`` and ``b``
    (weighted least squares, weights ``1/y``); non-negative least squares keeps both >= 0.
    """
    design = np.column_stack([1.0 / y, n**p / y])
    coef, norm = nnls(design, np.ones_like(y))
    return float(norm**2), coef


def _profile_interval(
    n: np.ndarray, y: np.ndarray, p_hat: float, rss_min: float, grid: np.ndarray
) -> tuple[float, float]:
    """The ``p`` whose profile RSS stays below ``rss_min * (1 + F_{0.95; 1, m-3} / (m-3))``."""
    dof = len(n) - 3
    limit = rss_min * (1.0 + float(f_dist.ppf(0.95, 1, dof)) / dof)

    def excess(p: float) -> float:
        return _profile(p, n, y)[0] - limit

    ends = []
    for side in (grid[grid < p_hat][::-1], grid[grid > p_hat]):
        inner, end = p_hat, None
        for p in side:
            if excess(p) > 0:
                end = brentq(excess, inner, p, xtol=1e-6)
                break
            inner = p
        ends.append(end)
    low = -math.inf if ends[0] is None else float(ends[0])
    high = math.inf if ends[1] is None else float(ends[1])
    return min(low, p_hat), max(high, p_hat)


def _curvature(n: np.ndarray, y: np.ndarray, fitted: np.ndarray) -> bool:
    """Whether the relative residuals bend: a significant, material quadratic in log n.

    Material: the bend changes the local log-log slope by more than :data:`CURVE_SLOPE_CHANGE`
    across the range (round-off on exact data is significant but not material).
    """
    u = np.log(n) - np.log(n).mean()
    r = (y - fitted) / y
    design = np.column_stack([np.ones_like(u), u, u * u])
    beta = np.linalg.lstsq(design, r, rcond=None)[0]
    change = abs(2.0 * beta[2] * (u.max() - u.min()))
    if change <= CURVE_SLOPE_CHANGE:
        return False
    dof = len(n) - 3
    var = float(((r - design @ beta) ** 2).sum()) / dof
    se = math.sqrt(var * np.linalg.inv(design.T @ design)[2, 2])
    return abs(beta[2]) > t_quantile(0.975, dof) * se


def _constant(y: np.ndarray) -> tuple[float, float]:
    """The best constant in relative error: (residual sum of squares, level)."""
    level = float((1.0 / y).sum() / (1.0 / y**2).sum())
    return float((((y - level) / y) ** 2).sum()), level


def _round_off(rss: float, count: int) -> bool:
    """Whether ``count`` relative residuals with this sum of squares are round-off."""
    return rss <= count * RESOLUTION**2


def _grows(rss_constant: float, rss_full: float, count: int) -> bool:
    """Whether ``a + b n^p`` fits significantly better than a constant (F test, :data:`LEVEL`).

    ``F = ((rss_constant - rss_full) / 2) / (rss_full / (count - 3))`` over ``count`` points,
    compared without dividing so that an exact fit (``rss_full`` at round-off) reads as growth.
    """
    dof = count - 3
    critical = float(f_dist.ppf(LEVEL, 2, dof))
    return (rss_constant - rss_full) * dof > 2.0 * critical * rss_full


def _flat_fit(n: np.ndarray, y: np.ndarray, m: int, level: float) -> ScalingFit:
    """Slope 0 for a series in which nothing grows, with its log-log slope's interval."""
    _, low, high = fit_slope(n, y)
    low, high = min(low, 0.0), max(high, 0.0)
    return ScalingFit(
        0.0, low, high, POWER, float(n[0]), float(n[-1]), False, m, level, NO_GROWTH, True
    )


def _top_fit(n: np.ndarray, y: np.ndarray, m: int, constant: float) -> ScalingFit:
    """The log-log slope over the largest :data:`TOP_LENGTHS` lengths (residuals curved)."""
    top_n, top_y = n[-TOP_LENGTHS:], y[-TOP_LENGTHS:]
    slope, low, high = fit_slope(top_n, top_y)
    return ScalingFit(slope, low, high, TOP, float(top_n[0]), float(top_n[-1]), True, m, constant)


def fit_scaling(kv_lens: Sequence[float], values: Sequence[float]) -> ScalingFit:
    """How ``values`` grow with ``kv_lens``: ``p`` of ``a + b n^p``, or the top-range slope.

    Args:
        kv_lens: Lengths, one value per length (take the median of replicates first).
        values: Times or memory (non-positive or non-finite pairs are dropped).

    Returns:
        A :class:`ScalingFit`; see the module docstring for which slope it holds.
    """
    x, y = _positive(kv_lens, values)
    order = np.argsort(x)
    n, y = x[order], y[order]
    m = len(np.unique(n))
    nan = float("nan")
    if m < MIN_CI_LENGTHS:
        slope = fit_slope(n, y)[0] if m >= 2 else nan
        low, high = (float(n[0]), float(n[-1])) if m else (nan, nan)
        note = f"{m} length{'s' if m != 1 else ''}: too few for an interval"
        return ScalingFit(slope, nan, nan, POWER, low, high, None, m, note=note)
    rss_constant, level = _constant(y)
    if _round_off(rss_constant, len(y)):  # constant to round-off: no test needed
        return _flat_fit(n, y, m, level)
    grid = np.linspace(*P_RANGE, 501)
    rss = [_profile(p, n, y)[0] for p in grid]
    i = int(np.argmin(rss))
    bounds = (grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)])
    best = minimize_scalar(
        lambda p: _profile(p, n, y)[0], bounds=bounds, method="bounded", options={"xatol": 1e-9}
    )
    p_hat = float(best.x)
    rss_min, (a, b) = _profile(p_hat, n, y)
    if not _grows(rss_constant, rss_min, len(y)):  # nothing grows: p is undefined
        return _flat_fit(n, y, m, level)
    if _curvature(n, y, a + b * n**p_hat):
        return _top_fit(n, y, m, float(a))
    if _round_off(rss_min, len(y)):  # exact data: no residual spread, the interval is the point
        low, high = p_hat, p_hat
    else:
        low, high = _profile_interval(n, y, p_hat, rss_min, grid)
    return ScalingFit(p_hat, low, high, ASYMPTOTIC, float(n[0]), float(n[-1]), False, m, float(a))
