"""How cost grows with sequence length: time, peak memory and achieved FLOP rate against kv_len.

Each ``plot_*`` function takes the rows of one device, draws one figure, saves it as PNG and
returns the :class:`~matplotlib.figure.Figure`; absent data raises
:class:`~harness.report.style.SkipFigure` with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import matplotlib.ticker
import matplotlib.transforms
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.analysis import scaling
from harness.analysis.series import SERIES_KEYS
from harness.report import style
from harness.report.style import PASS_NAMES, Line, SkipFigure, Style


def _slope_labels(lines: list[Line], slopes: pd.DataFrame) -> list[Line]:
    """Each line's label with its fitted slope and 95% CI appended, where one was fitted."""
    out = []
    for series, label, rows in lines:
        key = tuple(rows[SERIES_KEYS].iloc[0])
        s = slopes.loc[key] if key in slopes.index else None
        if s is not None and np.isfinite(s["slope"]):
            label = f"{label}: slope {style.slope_text(s.to_dict(), with_range=False)}"
        out.append((series, label, rows))
    return out


#: The legend's explanation of the slopes (see harness.analysis.fits).
SLOPE_LEGEND = (
    "legend: slope = exponent p of a + b·nᵖ over all lengths [95% CI]; "
    "'curved': log-log slope of the top lengths"
)


def _guides(ax: Any, ok: pd.DataFrame, metric: str, scale: float, x0: float, x1: float) -> None:
    """Faint O(n) and O(n²) lines from the median of the shortest ok length."""
    at_x0 = ok[ok["kv_len"] == ok["kv_len"].min()][metric].median() * scale
    x0_ok = float(ok["kv_len"].min())
    xs = np.geomspace(x0, x1, 50)
    for power, name in ((1, "O(n)"), (2, "O(n²)")):
        ax.plot(
            xs,
            at_x0 * (xs / x0_ok) ** power,
            color="#9a9a9a",
            linewidth=1.0,
            linestyle=(0, (1, 3)) if power == 1 else (0, (4, 3)),
            alpha=0.6,
            zorder=0,
            label=f"{name} guide",
            gid="guide",
        )


def _plot_vs_kv_len(
    df: pd.DataFrame,
    path: str | Path,
    metric: str,
    pass_: str,
    ylabel: str,
    title_text: str,
    slope_fn: Callable[[pd.DataFrame, str], pd.DataFrame],
    scale: float = 1.0,
    styles: Mapping[str, Style] | None = None,
) -> Figure:
    """``metric`` against kv_len, log-log, with slopes in the legend, guides and oom marks."""
    df, device = style.one_device(df, title_text)
    rows = df[df["pass"] == pass_]
    ok = rows[(rows["status"] == "ok") & (pd.to_numeric(rows[metric], errors="coerce") > 0)]
    if not len(ok):
        raise SkipFigure(f"no ok {pass_} rows with {metric} on {device}")
    styles = styles or style.style_map(df)
    slopes = slope_fn(df, pass_).set_index(SERIES_KEYS)
    fig, ax, omitted = style.series_vs_length(
        rows, metric, styles, device, scale, relabel=lambda lines: _slope_labels(lines, slopes)
    )
    ax.set_yscale("log")
    y = ok[metric].to_numpy(dtype=float) * scale
    lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
    span = max(math.log10(hi / lo), 0.5)
    # Headroom above the data for the oom markers, a little room below.
    ax.set_ylim(lo / 10 ** (0.05 * span), hi * 10 ** (0.22 * span))
    all_lengths = rows["kv_len"].dropna().unique()
    x0, x1 = float(np.min(all_lengths)), float(np.max(all_lengths))
    if x1 > x0:
        _guides(ax, ok, metric, scale, x0, x1)
    _mark_oom(ax, rows, styles)
    style.length_ticks(ax, all_lengths)
    labels = (style.LENGTH_LABEL, ylabel)
    note = style.join(SLOPE_LEGEND, omitted)
    return style.label_and_save(fig, ax, path, labels, title_text, rows, device, note)


#: How points that did not fit are marked at the top edge: (marker, text, legend label).
DID_NOT_FIT = {
    "oom": ("x", "oom", "out of memory (marked at top edge)"),
    "over_budget": ("D", "over budget", "over the memory budget{budget} (marked at top edge)"),
}


def _mark_oom(ax: Any, rows: pd.DataFrame, styles: Mapping[str, Style]) -> None:
    """A marker at the top edge of the axes at each length where a series did not fit.

    Out of memory (``oom``, an allocation failed) is an 'x' (``gid="oom"``); refused by the
    memory estimate (``over_budget``) a hollow diamond (``gid="over_budget"``). Series are
    staggered vertically so that two series at the same length stay distinguishable.
    """
    trans = matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)
    failed = rows[rows["status"].isin(list(DID_NOT_FIT))]
    for i, ((series, status), group) in enumerate(failed.groupby(["series", "status"])):
        marker, text, _ = DID_NOT_FIT[status]
        st = style.style_for(styles, series)
        xs = sorted(group["kv_len"].unique())
        y = 0.95 - 0.045 * (i % 5)
        size = 8 if marker == "x" else 6
        ax.plot(xs, [y] * len(xs), transform=trans, linestyle="none", marker=marker,
                markersize=size, markeredgewidth=2, markerfacecolor="none", color=st.color,
                label=f"_{status} {series}", gid=status, clip_on=False)  # fmt: skip
        ax.annotate(text, (xs[0], y), xycoords=trans, xytext=(-7, 0), textcoords="offset points",
                    ha="right", va="center", fontsize=7, color=st.color)  # fmt: skip
    for status in sorted(set(failed["status"])):
        marker, _, label = DID_NOT_FIT[status]
        budget = failed.loc[failed["status"] == status, "memory_budget_bytes"].dropna()
        gb = f" ({budget.median() / 1e9:g} GB)" if len(budget) else ""
        ax.plot([], [], linestyle="none", marker=marker, color="#444444", markeredgewidth=2,
                markerfacecolor="none", label=label.format(budget=gb))  # fmt: skip


def plot_time(
    df: pd.DataFrame,
    path: str | Path,
    pass_: str = "fwd",
    styles: Mapping[str, Style] | None = None,
) -> Figure:
    """Median time against kv_len, log-log, one line per series with its fitted slope.

    Faint O(n) and O(n²) guides start at the median time of the shortest length; points out of
    memory are 'x' markers at the top edge at their length.

    Args:
        df: Rows of one device.
        path: PNG to write.
        pass_: ``fwd``, ``bwd`` or ``fwd_bwd``.
        styles: Series styles shared across figures (default: from ``df``).
    """
    return _plot_vs_kv_len(
        df,
        path,
        "time_ms",
        pass_,
        "median time per call (ms, log scale)",
        f"Time vs sequence length ({PASS_NAMES.get(pass_, pass_)})",
        slope_fn=scaling.time_slopes,
        styles=styles,
    )


def plot_memory(
    df: pd.DataFrame,
    path: str | Path,
    pass_: str = "fwd",
    styles: Mapping[str, Style] | None = None,
) -> Figure:
    """Measured peak memory above baseline against kv_len, log-log; as :func:`plot_time`."""
    return _plot_vs_kv_len(
        df,
        path,
        "peak_mem_bytes",
        pass_,
        "peak memory above baseline (MiB, log scale)",
        f"Peak memory vs sequence length ({PASS_NAMES.get(pass_, pass_)})",
        slope_fn=scaling.memory_slopes,
        scale=1.0 / 2**20,
        styles=styles,
    )


def plot_rate(
    df: pd.DataFrame,
    path: str | Path,
    pass_: str = "fwd",
    styles: Mapping[str, Style] | None = None,
) -> Figure:
    """Achieved FLOP rate as a fraction of the device's measured matmul rate vs kv_len."""
    df, device = style.one_device(df, "rate")
    rows = df[(df["pass"] == pass_) & (df["status"] == "ok")].copy()
    rows["rate_frac"] = rows["tflops"] / rows["matmul_tflops"]
    rows = rows[rows["rate_frac"] > 0]
    if not len(rows):
        raise SkipFigure(f"no ok {pass_} rows with tflops and matmul_tflops on {device}")
    styles = styles or style.style_map(df)
    fig, ax, omitted = style.series_vs_length(rows, "rate_frac", styles, device)
    frac = rows["rate_frac"]
    if frac.max() / frac.min() > 30:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, max(1.05, frac.max() * 1.1) if frac.max() > 0.8 else frac.max() * 1.15)
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    style.length_ticks(ax, rows["kv_len"].unique())
    matmul = rows["matmul_tflops"].median()
    return style.label_and_save(
        fig,
        ax,
        path,
        (style.LENGTH_LABEL, "achieved FLOP/s ÷ measured matmul FLOP/s"),
        f"Achieved rate ({PASS_NAMES.get(pass_, pass_)}) as a fraction of the device's "
        "matmul rate",
        rows,
        device,
        style.join(f"matmul {matmul:.3g} TFLOP/s", omitted),
    )
