"""How far from exact attention: error against length, input temperature and each knob; the
accuracy/speed trade-off with its Pareto front.

What a row's variant is comes from the row itself: ``exact`` (exact variants sit at the float
rounding floor and are left out of the error figures, or drawn as vertical lines in the trade-off),
``knob`` and ``knob_value`` (the error-vs-knob panels). Error depends on the inputs, so each
figure uses the most common inputs setting and never pools several.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.analysis import scaling
from harness.analysis.series import as_mapping, series_labels
from harness.report import style
from harness.report.style import SkipFigure, Style


def _ok_fwd_errors(df: pd.DataFrame) -> pd.DataFrame:
    """Forward rows that ran and have a positive error."""
    return df[(df["pass"] == "fwd") & (df["status"] == "ok") & (df["rel_err"] > 0)]


#: How the two trivial baselines are drawn (grey: references, not variants).
BASELINE_STYLE = {"color": "#7f7f7f", "linewidth": 1.1, "zorder": 1}


def draw_baselines(ax, rows: pd.DataFrame, x: str | None = None) -> None:
    """The two trivial baselines on the same inputs, so "worse than uniform attention" shows.

    Outputting zeros has relative error 1 by definition (a dashed line, ``gid="baseline_zeros"``);
    uniform attention (the mean of V over the keys each query may see) has the rows'
    ``baseline_uniform_rel_err`` (dotted, ``gid="baseline_uniform"``): one line at its median,
    or its median per ``x`` where it varies with ``x``. Rows without the column draw no
    uniform line.
    """
    ax.axhline(1.0, linestyle=(0, (6, 3)), gid="baseline_zeros",
               label="baseline: output zeros (error 1)", **BASELINE_STYLE)  # fmt: skip
    uniform = rows[rows["baseline_uniform_rel_err"] > 0]
    if not len(uniform):
        return
    label = "baseline: uniform attention (mean of V)"
    curve = uniform.groupby(x)["baseline_uniform_rel_err"].median() if x else None
    if curve is None or len(curve) < 2 or curve.max() / curve.min() < 1.02:
        level = float(uniform["baseline_uniform_rel_err"].median())
        ax.axhline(level, linestyle=":", gid="baseline_uniform", label=f"{label}: {level:.2g}",
                   **BASELINE_STYLE)  # fmt: skip
    else:
        ax.plot(curve.index, curve.to_numpy(), linestyle=":", marker=".", gid="baseline_uniform",
                label=label, **BASELINE_STYLE)  # fmt: skip


def _keep_baselines_in_view(ax, rows: pd.DataFrame) -> None:
    """Extend a log y axis so that both baselines (1 and uniform attention) are visible."""
    low, high = ax.get_ylim()
    uniform = rows["baseline_uniform_rel_err"].dropna()
    top = max([1.0] + [float(uniform.max())] * bool(len(uniform)))
    bottom = min([1.0] + [float(uniform.min())] * bool(len(uniform)))
    ax.set_ylim(min(low, bottom / 1.5), max(high, top * 1.5))


def _drop_exact(rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Rows of approximations only, plus a note on the exact variants left out.

    Exact variants sit at the float rounding floor (~1e-7), five decades below the
    approximations; drawn on the same log axis they squeeze every approximation into a band.
    With no approximation present, the exact rows are kept.
    """
    exact = rows["exact"].astype(bool)
    if not exact.any() or exact.all():
        return rows, ""
    names = ", ".join(sorted(rows.loc[exact, "variant"].unique()))
    floor = rows.loc[exact, "rel_err"].max()
    return rows[~exact], f"exact variants ({names}; error ≤ {floor:.1e}) not drawn"


def _densest(rows: pd.DataFrame, column: str) -> tuple[pd.DataFrame, float]:
    """Rows at the (largest) kv_len with the most distinct values of ``column``, and it."""
    per_len = rows.groupby("kv_len")[column].nunique()
    kv_len = float(per_len[per_len == per_len.max()].index.max())
    return rows[rows["kv_len"] == kv_len], kv_len


def plot_error(
    df: pd.DataFrame, path: str | Path, styles: Mapping[str, Style] | None = None
) -> Figure:
    """Relative error against exact attention vs kv_len (forward rows, one inputs setting)."""
    df, device = style.one_device(df, "error")
    rows = _ok_fwd_errors(df)
    if not len(rows):
        raise SkipFigure(f"no ok fwd rows with rel_err on {device}")
    rows, inputs = style.most_common_inputs(rows)
    rows, exact_note = _drop_exact(rows)
    styles = styles or style.style_map(df)
    fig, ax, omitted = style.series_vs_length(rows, "rel_err", styles, device)
    ax.set_yscale("log")
    draw_baselines(ax, rows, "kv_len")
    _keep_baselines_in_view(ax, rows)
    style.length_ticks(ax, rows["kv_len"].unique())
    return style.label_and_save(
        fig,
        ax,
        path,
        (style.LENGTH_LABEL, "relative error ‖out − exact‖ / ‖exact‖ (log scale)"),
        "Error against exact softmax attention vs sequence length",
        rows,
        device,
        style.join(f"inputs {inputs}", exact_note, omitted),
    )


def plot_error_vs_temperature(
    df: pd.DataFrame, path: str | Path, styles: Mapping[str, Style] | None = None
) -> Figure:
    """Relative error against the inputs' temperature at the kv_len with most temperatures."""
    df, device = style.one_device(df, "error vs temperature")
    rows = _ok_fwd_errors(df).copy()
    rows["temperature"] = pd.to_numeric(
        rows["inputs_params"].map(lambda p: as_mapping(p).get("temperature")), errors="coerce"
    )
    rows = rows[rows["temperature"].notna()]
    if not len(rows) or rows["temperature"].nunique() < 2:
        raise SkipFigure(f"fewer than two input temperatures among ok fwd rows on {device}")
    rows, kv_len = _densest(rows, "temperature")
    rows, exact_note = _drop_exact(rows)
    inputs = ", ".join(sorted({v if isinstance(v, str) else "unknown" for v in rows["inputs"]}))
    styles = styles or style.style_map(df)
    lines = [ln for ln in style.line_groups(rows) if ln[2]["temperature"].nunique() >= 2]
    omitted = len(style.line_groups(rows)) - len(lines)
    fig, ax = plt.subplots(figsize=style.FIGSIZE)
    style.draw_series(
        ax, lines, lambda g: g.groupby("temperature")["rel_err"].median().sort_index(), styles
    )
    draw_baselines(ax, rows, "temperature")
    temps = rows["temperature"]
    if temps.min() > 0 and temps.max() / temps.min() >= 8:
        ax.set_xscale("log")
        style.plain_ticks(ax, temps.unique())
    ax.set_yscale("log")
    _keep_baselines_in_view(ax, rows)
    note = f"{omitted} series run at one temperature not drawn" if omitted else ""
    return style.label_and_save(
        fig,
        ax,
        path,
        ("input temperature (scale of q·k; higher = sharper attention)",
         "relative error vs exact (log scale)"),
        "Error vs input temperature",
        rows,
        device,
        style.join(f"n = {int(kv_len)}; inputs {inputs}", exact_note, note),
    )  # fmt: skip


def _knob_panels(ok: pd.DataFrame) -> list[tuple[str, str, float, pd.DataFrame, str]]:
    """(variant, knob, kv_len, rows, inputs) per variant whose rows name a knob with two or more
    values.

    Each panel uses the most common inputs setting (``inputs``, its label) and the kv_len with
    the most knob values.
    """
    panels = []
    rows_with_knob = ok[ok["knob"].notna() & ok["knob_value"].notna()]
    for (variant, knob), rows in rows_with_knob.groupby(["variant", "knob"], sort=True):
        if rows["knob_value"].nunique() < 2:
            continue
        rows, inputs = style.most_common_inputs(rows)
        rows, kv_len = _densest(rows, "knob_value")
        if rows["knob_value"].nunique() >= 2:
            panels.append((str(variant), str(knob), kv_len, rows, inputs))
    return panels


def plot_error_vs_knob(
    df: pd.DataFrame, path: str | Path, styles: Mapping[str, Style] | None = None
) -> Figure:
    """One panel per approximation: its relative error against its own accuracy knob.

    The knob and its value are the rows' ``knob`` and ``knob_value`` columns.
    """
    df, device = style.one_device(df, "error vs knob")
    panels = _knob_panels(_ok_fwd_errors(df))
    if not panels:
        raise SkipFigure(f"no approximation ran with two or more values of its knob on {device}")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False, sharey=True
    )
    for ax, (variant, knob, kv_len, rows, _) in zip(axes.flat, panels):
        # one line per configuration other than the knob (untrained, eps stay in the label)
        labels = series_labels(rows, ignore={variant: [knob]})
        for i, (label, group) in enumerate(rows.groupby(labels, sort=True)):
            curve = group.groupby("knob_value")["rel_err"].median().sort_index()
            style.draw_curve(ax, curve, style.nth_style(variant, i), label)
        values = rows["knob_value"]
        if values.min() > 0 and values.max() / values.min() >= 4:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_yscale("log")
        draw_baselines(ax, rows)
        name = labels.iloc[0] if labels.nunique() == 1 else variant
        ax.set_title(f"{name} (n = {int(kv_len)})", fontsize=9)
        ax.set_xlabel(knob)
        ax.grid(True, alpha=0.25)
        if labels.nunique() > 1:
            ax.legend(fontsize=7, frameon=False)
    # one shared y axis: the range of every panel's errors and both baselines
    shown = pd.concat([p[3] for p in panels])
    values = pd.concat([shown["rel_err"], shown["baseline_uniform_rel_err"].dropna()])
    axes.flat[0].set_ylim(min(values.min(), 1.0) / 1.5, max(values.max(), 1.0) * 1.5)
    for ax in axes[:, 0]:
        ax.set_ylabel("relative error vs exact")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    inputs = "; ".join(sorted({p[4] for p in panels}))
    fig.suptitle(
        f"Error vs each approximation's knob — {device}\ninputs {inputs}; grey dashed: output "
        "zeros (error 1), grey dotted: uniform attention (mean of V)",
        fontsize=9,
        x=0.01,
        ha="left",
    )
    fig.tight_layout()
    return style.finish(fig, axes.flat[0], path, legend=False)


def pareto_front(times: Sequence[float], errors: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats in both time and error, by increasing time."""
    order = sorted(range(len(times)), key=lambda i: (times[i], errors[i]))
    front, best = [], math.inf
    for i in order:
        if errors[i] < best:
            front.append(i)
            best = errors[i]
    return front


def _draw_front(ax, points: pd.DataFrame, approx: pd.DataFrame) -> None:
    """The Pareto front as a dashed step line; it ends at the fastest exact variant."""
    front_pts = points.iloc[pareto_front(points["time_ms"].tolist(), points["rel_err"].tolist())]
    if front_pts["exact"].any():
        front_pts = front_pts.iloc[: int(np.argmax(front_pts["exact"].to_numpy())) + 1]
    if len(approx):
        bottom = approx["rel_err"].min() / 3.0
        ax.set_ylim(bottom, approx["rel_err"].max() * 2.0)
        fy = np.where(front_pts["exact"], bottom, front_pts["rel_err"])
    else:
        fy = front_pts["rel_err"].to_numpy()
    ax.step(
        front_pts["time_ms"].to_numpy(),
        fy,
        where="post",
        color="#333333",
        linestyle="--",
        linewidth=1.2,
        zorder=2,
        label="Pareto front (nothing both faster and more accurate)",
        gid="pareto",
    )


def plot_tradeoff(
    df: pd.DataFrame,
    path: str | Path,
    kv_len: float | None = None,
    styles: Mapping[str, Style] | None = None,
) -> Figure:
    """Error against forward time at one kv_len, one point per series, with the Pareto front.

    Args:
        df: Rows of one device.
        path: PNG to write.
        kv_len: Length to compare at (default: the largest at which the most series ran).
        styles: Series styles shared across figures.
    """
    df, device = style.one_device(df, "trade-off")
    ok = _ok_fwd_errors(df)
    ok, inputs = style.most_common_inputs(ok[ok["time_ms"] > 0])
    if kv_len is None:
        kv_len = scaling.default_reference_kv_len(ok) if len(ok) else None
    rows = ok[ok["kv_len"] == kv_len] if kv_len is not None else ok.iloc[:0]
    if rows["series"].nunique() < 2:
        raise SkipFigure(f"fewer than two series with time and rel_err at one length on {device}")
    styles = styles or style.style_map(df)
    points = rows.groupby(["variant", "series"], sort=True).agg(
        time_ms=("time_ms", "median"),
        rel_err=("rel_err", "median"),
        exact=("exact", "any"),
        knob_value=("knob_value", "first"),
    )
    approx = points[~points["exact"]]
    fig, ax = plt.subplots(figsize=style.FIGSIZE)
    for (variant, series), pt in sorted(
        approx.iterrows(), key=lambda t: style.natural_key(t[0][1])
    ):
        st = style.style_for(styles, series, str(variant))
        ax.scatter(
            [pt["time_ms"]],
            [pt["rel_err"]],
            color=st.color,
            marker=st.marker,
            s=45,
            label=series,
            zorder=3,
            edgecolors="white",
            linewidths=0.5,
        )
        # the knob value beside the point ("k=16" crowds clusters; the legend has the rest)
        short = f"{pt['knob_value']:g}" if np.isfinite(pt["knob_value"]) else ""
        if short:  # the legend alone makes the eye hop
            ax.annotate(
                short,
                (pt["time_ms"], pt["rel_err"]),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=7,
                color=st.color,
            )
    # Exact variants sit ~5 decades below every approximation; a vertical line at their time
    # keeps the approximations readable and still shows what exactness costs.
    for (variant, series), pt in points[points["exact"]].iterrows():
        st = style.style_for(styles, series, str(variant))
        ax.axvline(
            pt["time_ms"],
            color=st.color,
            linestyle=st.linestyle,
            linewidth=1.2,
            label=f"{series} (exact, error {pt['rel_err']:.0e})",
            gid="exact",
            zorder=1,
        )
    _draw_front(ax, points, approx)
    ax.set_xscale("log")
    ax.set_yscale("log")
    draw_baselines(ax, rows)
    _keep_baselines_in_view(ax, rows)
    ax.set_xlim(points["time_ms"].min() / 1.4, points["time_ms"].max() * 2.0)  # room for labels
    return style.label_and_save(
        fig,
        ax,
        path,
        ("forward time (ms, log scale) — left is faster",
         "relative error vs exact (log scale) — lower is better"),
        "Accuracy / speed trade-off",
        rows,
        device,
        f"n = {int(kv_len)}; inputs {inputs}",
    )  # fmt: skip
