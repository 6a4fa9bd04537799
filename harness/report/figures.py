"""The comparison figures (matplotlib, Agg backend, PNG), readable at a glance.

Every figure keeps one colour per variant (:func:`color_for`: a fixed palette for the built-ins,
a stable hash-picked colour for plugins), so a reader who learnt "performer is green" in the time
plot finds it green everywhere. Several configurations of one variant (series, see
:mod:`harness.analysis.scaling`) share the colour and differ in line style and marker.

Each ``plot_*`` function takes the rows of **one device** (``device_key``), draws one figure,
saves it as PNG and returns the :class:`~matplotlib.figure.Figure` (so tests can inspect its
lines and collections); when the figure's data is absent it raises :class:`SkipFigure` with the
reason instead of drawing an empty picture. :func:`plot_all` splits rows by device, draws every
figure, closes them and reports what it drew and what it skipped and why.
"""

from __future__ import annotations

import json
import logging
import math
import re
import textwrap
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from harness.analysis import scaling  # noqa: E402

log = logging.getLogger(__name__)

#: Colour of each built-in variant. The exact baselines are neutral (black, greys, brown) so
#: that the approximations stand out against them.
PALETTE: dict[str, str] = {
    "full": "#000000",
    "sdpa": "#6e6e6e",
    "xformers": "#8c564b",
    "longformer": "#1f77b4",
    "local": "#17becf",
    "linformer": "#ff7f0e",
    "performer": "#2ca02c",
    "nystrom": "#d62728",
    "bigbird": "#9467bd",
    "linear": "#e377c2",
}
#: Colours for plugins, picked by a stable hash of the name (never Python's salted ``hash``).
EXTRA_COLORS: tuple[str, ...] = (
    "#bcbd22",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#7b4173",
    "#3182bd",
    "#e6550d",
    "#31a354",
    "#756bb1",
    "#636363",
    "#ad494a",
)
LINESTYLES: tuple[str, ...] = ("-", "--", "-.", ":")
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*")

#: The accuracy knob of each built-in approximation (plugins declare a class attribute ``knob``).
KNOBS: dict[str, str] = {
    "longformer": "window",
    "local": "window",
    "linformer": "k",
    "performer": "nb_features",
    "nystrom": "num_landmarks",
    "bigbird": "num_random_blocks",
}

PASS_NAMES = {"fwd": "forward", "bwd": "backward", "fwd_bwd": "forward + backward"}
DPI = 110


class SkipFigure(Exception):
    """A figure's data is absent; the message says what is missing."""


@dataclass
class FigureResult:
    """What :func:`plot_all` did for one figure: the PNG it wrote, or why it skipped it."""

    name: str
    device: str | None
    path: Path | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class Style:
    """How one series is drawn."""

    color: str
    linestyle: str
    marker: str


# ----------------------------------------------------------------------------- styling
def color_for(variant: str) -> str:
    """The colour of ``variant`` in every figure (stable across runs and machines)."""
    if variant in PALETTE:
        return PALETTE[variant]
    return EXTRA_COLORS[zlib.crc32(variant.encode()) % len(EXTRA_COLORS)]


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``k=64`` before ``k=256`` (numbers compared as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def style_map(df: pd.DataFrame) -> dict[str, Style]:
    """Style per series label of ``df`` (prepared): variant colour, style by series order."""
    df = scaling.prepare(df)
    styles: dict[str, Style] = {}
    counts = df.groupby(["variant", "series"]).size().reset_index(name="rows")
    for variant, group in counts.groupby("variant", sort=True):
        # The configuration with the most rows (the one swept over n) gets the solid line.
        order = sorted(
            zip(group["series"], group["rows"]), key=lambda t: (-t[1], natural_key(t[0]))
        )
        for i, (series, _) in enumerate(order):
            styles[series] = Style(
                color_for(str(variant)), LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)]
            )
    return styles


def knob_for(variant: str) -> str | None:
    """The accuracy knob of ``variant``: the built-in table, else the class's ``knob``."""
    if variant in KNOBS:
        return KNOBS[variant]
    try:
        import variants

        return getattr(variants.get_class(variant), "knob", None)
    except Exception:  # noqa: BLE001 - an unknown or broken plugin just has no knob plot
        return None


def slug(text: str) -> str:
    """A file-name-safe form of ``text``."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "device"


def _seq_len_ticks(ax: Any, lengths: Sequence[float]) -> None:
    """Tick the measured seq_lens as plain integers: a reader wants 4096, not 10^3.6."""
    lengths = sorted({int(x) for x in lengths if np.isfinite(x)})
    if 1 < len(lengths) <= 12:
        ax.set_xticks(lengths)
        ax.set_xticklabels([str(n) for n in lengths])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _context_text(df: pd.DataFrame) -> str:
    """The shape shared by every row, e.g. 'float32, non-causal, batch 1, 8 heads, head_dim 64'."""
    parts = []
    for col, fmt in (
        ("dtype", "{}"),
        ("causal", None),
        ("batch", "batch {}"),
        ("heads", "{} heads"),
        ("head_dim", "head_dim {}"),
    ):
        values = df[col].dropna().unique()
        if len(values) != 1 or (col in ("batch", "heads", "head_dim") and values[0] < 0):
            continue
        parts.append(
            ("causal" if values[0] else "non-causal") if fmt is None else fmt.format(values[0])
        )
    return ", ".join(parts)


def _line_groups(df: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(series, label, rows) per drawn line; context columns that vary are added to the label."""
    varying = [c for c in ("dtype", "causal", "batch", "heads", "head_dim") if df[c].nunique() > 1]
    out = []
    for key, rows in df.groupby(["series"] + varying, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        extra = [f"{c}={v}" for c, v in zip(varying, key[1:])]
        label = key[0] + (f" [{', '.join(extra)}]" if extra else "")
        out.append((key[0], label, rows))
    return sorted(out, key=lambda line: natural_key(line[1]))


def _multi_length(
    lines: list[tuple[str, str, pd.DataFrame]], metric: str
) -> tuple[list[tuple[str, str, pd.DataFrame]], int]:
    """Lines with ok values at two or more lengths, and how many were left out.

    A series measured at one length only (a knob or temperature sweep at fixed n) has no
    curve against n; drawing it as a lone dot with a legend entry would only add clutter.
    """
    keep = [ln for ln in lines if len(scaling._per_seq_len(ln[2], metric)) >= 2]
    return keep, len(lines) - len(keep)


def _omitted_text(omitted: int) -> str:
    return f"{omitted} series measured at a single length not drawn" if omitted else ""


def is_exact(variant: str, rows: pd.DataFrame | None = None) -> bool:
    """Whether ``variant`` computes softmax attention exactly (class constant, else its error)."""
    try:
        import variants

        return bool(variants.get_class(variant).exact)
    except Exception:  # noqa: BLE001 - unknown plugin: judge by the error it reached
        if rows is None or "rel_err" not in rows:
            return False
        err = pd.to_numeric(rows["rel_err"], errors="coerce")
        return bool(err.notna().any() and err.max() < 1e-4)


def _drop_exact(rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Rows of approximations only, plus a note on the exact variants left out.

    Exact variants sit at the float rounding floor (~1e-7), five decades below the
    approximations; drawn on the same log axis they squeeze every approximation into a band.
    With no approximation present, the exact rows are kept.
    """
    exact = [
        v for v in sorted(rows["variant"].unique()) if is_exact(v, rows[rows["variant"] == v])
    ]
    approx = rows[~rows["variant"].isin(exact)]
    if not exact or not len(approx):
        return rows, ""
    floor = rows.loc[rows["variant"].isin(exact), "rel_err"].max()
    return approx, f"exact variants ({', '.join(exact)}; error ≤ {floor:.1e}) not drawn"


def _plain_ticks(ax: Any, values: Sequence[float]) -> None:
    """Tick the measured values of a log x axis as plain numbers (0.25, 1, 4, not 10^-0.6)."""
    values = sorted({float(v) for v in values})
    if 1 < len(values) <= 12:
        ax.set_xticks(values)
        ax.set_xticklabels([f"{v:g}" for v in values])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _one_device(df: pd.DataFrame, what: str) -> tuple[pd.DataFrame, str]:
    df = scaling.prepare(df)
    devices = df["device_key"].dropna().unique()
    if len(devices) > 1:
        raise ValueError(f"{what}: rows from {len(devices)} devices; plot_all splits them")
    return df, (str(devices[0]) if len(devices) else "unknown device")


def _finish(fig: Figure, ax: Any, path: str | Path, legend: bool = True) -> Figure:
    """Legend outside the axes (never over data), tight layout, save."""
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return fig


def _title(ax: Any, title: str, df: pd.DataFrame, device: str, extra: str = "") -> None:
    sub = textwrap.fill(_join(device, _context_text(df), extra), width=110)
    ax.set_title(f"{title}\n{sub}", fontsize=10, loc="left")


def _inputs_key(df: pd.DataFrame) -> pd.Series:
    """Inputs generator and its params as one comparable string per row."""
    params = df["inputs_params"].map(lambda p: json.dumps(scaling.parse_params(p), sort_keys=True))
    return df["inputs"].astype(str) + " " + params


def _most_common_inputs(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Rows of the most frequent inputs configuration (error depends on inputs; do not pool)."""
    if not len(df):
        return df, ""
    keys = _inputs_key(df)
    top = keys.value_counts().index[0]
    return df[keys == top], top.replace(" {}", "")


# ------------------------------------------------------------------- metric vs seq_len plots
def _plot_vs_seq_len(
    df: pd.DataFrame,
    path: str | Path,
    metric: str,
    pass_: str,
    ylabel: str,
    title: str,
    scale: float = 1.0,
    slope_fn: Callable[[pd.DataFrame, str], pd.DataFrame] | None = None,
    styles: Mapping[str, Style] | None = None,
    mark_oom: bool = True,
    guides: bool = True,
) -> Figure:
    df, device = _one_device(df, title)
    rows = df[df["pass"] == pass_]
    ok = rows[(rows["status"] == "ok") & (pd.to_numeric(rows[metric], errors="coerce") > 0)]
    if not len(ok):
        raise SkipFigure(f"no ok {pass_} rows with {metric} on {device}")
    styles = styles or style_map(df)
    slopes = slope_fn(df, pass_).set_index(scaling.SERIES_KEYS) if slope_fn else None

    lines, omitted = _multi_length(_line_groups(rows), metric)
    if not lines:
        raise SkipFigure(f"no series with {metric} at two or more lengths on {device}")
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    for series, label, group in lines:
        per_len = scaling._per_seq_len(group, metric)
        st = styles.get(series, Style(color_for(series), "-", "o"))
        if slopes is not None:
            key = tuple(group[scaling.SERIES_KEYS].iloc[0])
            s = slopes.loc[key] if key in slopes.index else None
            if s is not None and np.isfinite(s["slope"]):
                ci = (
                    f" [{s['ci_low']:.2f}, {s['ci_high']:.2f}]" if np.isfinite(s["ci_low"]) else ""
                )
                label = f"{label}: slope {s['slope']:.2f}{ci}"
        ax.plot(
            per_len.index,
            per_len.to_numpy() * scale,
            color=st.color,
            linestyle=st.linestyle,
            marker=st.marker,
            markersize=5,
            linewidth=1.6,
            label=label,
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    y = ok[metric].to_numpy(dtype=float) * scale
    lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
    span = max(math.log10(hi / lo), 0.5)
    # Headroom above the data for the oom markers, a little room below.
    ax.set_ylim(lo / 10 ** (0.05 * span), hi * 10 ** (0.22 * span))
    all_lengths = rows["seq_len"].dropna().unique()
    x0, x1 = float(np.min(all_lengths)), float(np.max(all_lengths))
    if guides and x1 > x0:
        at_x0 = ok[ok["seq_len"] == ok["seq_len"].min()][metric].median() * scale
        x0_ok = float(ok["seq_len"].min())
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
    if mark_oom:
        _mark_oom(ax, rows, styles)
    _seq_len_ticks(ax, all_lengths)
    ax.set_xlabel("sequence length n (tokens, log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.25)
    _title(ax, title, rows, device, _omitted_text(omitted))
    return _finish(fig, ax, path)


def _mark_oom(ax: Any, rows: pd.DataFrame, styles: Mapping[str, Style]) -> None:
    """An 'x' at the top edge of the axes at each seq_len where a series ran out of memory.

    Series are staggered vertically so that two series out of memory at the same length stay
    distinguishable; each marker line has ``gid="oom"`` for tests and readers of the figure.
    """
    oom = rows[rows["status"] == "oom"]
    if not len(oom):
        return
    trans = matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)
    for i, (series, group) in enumerate(oom.groupby("series", sort=True)):
        st = styles.get(series, Style(color_for(series), "-", "o"))
        xs = sorted(group["seq_len"].unique())
        y = 0.95 - 0.045 * (i % 5)
        ax.plot(
            xs,
            [y] * len(xs),
            transform=trans,
            linestyle="none",
            marker="x",
            markersize=8,
            markeredgewidth=2,
            color=st.color,
            label=f"_oom {series}",
            gid="oom",
            clip_on=False,
        )
        ax.annotate(
            "oom",
            (xs[0], y),
            xycoords=trans,
            xytext=(-7, 0),
            textcoords="offset points",
            ha="right",
            va="center",
            fontsize=7,
            color=st.color,
        )
    ax.plot(
        [],
        [],
        linestyle="none",
        marker="x",
        color="#444444",
        markeredgewidth=2,
        label="out of memory (marked at top edge)",
    )


def plot_time(
    df: pd.DataFrame,
    path: str | Path,
    pass_: str = "fwd",
    styles: Mapping[str, Style] | None = None,
) -> Figure:
    """Median time against seq_len, log-log, one line per series with its fitted slope.

    Faint O(n) and O(n²) guides start at the median time of the shortest length; points out of
    memory are 'x' markers at the top edge at their seq_len.

    Args:
        df: Rows of one device.
        path: PNG to write.
        pass_: ``fwd``, ``bwd`` or ``fwd_bwd``.
        styles: Series styles shared across figures (default: from ``df``).
    """
    return _plot_vs_seq_len(
        df,
        path,
        "time_ms",
        pass_,
        "median time per call (ms, log scale)",
        f"Time vs sequence length ({PASS_NAMES.get(pass_, pass_)}); "
        "legend: log-log slope [95% CI]",
        slope_fn=scaling.time_slopes,
        styles=styles,
    )


def plot_memory(
    df: pd.DataFrame,
    path: str | Path,
    pass_: str = "fwd",
    styles: Mapping[str, Style] | None = None,
) -> Figure:
    """Measured peak memory above baseline against seq_len, log-log; as :func:`plot_time`."""
    return _plot_vs_seq_len(
        df,
        path,
        "peak_mem_bytes",
        pass_,
        "peak memory above baseline (MiB, log scale)",
        f"Peak memory vs sequence length ({PASS_NAMES.get(pass_, pass_)}); "
        "legend: log-log slope [95% CI]",
        scale=1.0 / 2**20,
        slope_fn=scaling.memory_slopes,
        styles=styles,
    )


def plot_error(
    df: pd.DataFrame, path: str | Path, styles: Mapping[str, Style] | None = None
) -> Figure:
    """Relative error against exact attention vs seq_len (forward rows, one inputs setting)."""
    df, device = _one_device(df, "error")
    rows = df[(df["pass"] == "fwd") & (df["status"] == "ok") & (df["rel_err"] > 0)]
    if not len(rows):
        raise SkipFigure(f"no ok fwd rows with rel_err on {device}")
    rows, inputs = _most_common_inputs(rows)
    rows, exact_note = _drop_exact(rows)
    styles = styles or style_map(df)
    lines, omitted = _multi_length(_line_groups(rows), "rel_err")
    if not lines:
        raise SkipFigure(f"no series with rel_err at two or more lengths on {device}")
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    for series, label, group in lines:
        per_len = scaling._per_seq_len(group, "rel_err")
        st = styles.get(series, Style(color_for(series), "-", "o"))
        ax.plot(
            per_len.index,
            per_len.to_numpy(),
            color=st.color,
            linestyle=st.linestyle,
            marker=st.marker,
            markersize=5,
            label=label,
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _seq_len_ticks(ax, rows["seq_len"].unique())
    ax.set_xlabel("sequence length n (tokens, log scale)")
    ax.set_ylabel("relative error ‖out − exact‖ / ‖exact‖ (log scale)")
    ax.grid(True, alpha=0.25)
    _title(
        ax,
        "Error against exact softmax attention vs sequence length",
        rows,
        device,
        _join(f"inputs {inputs}", exact_note, _omitted_text(omitted)),
    )
    return _finish(fig, ax, path)


def plot_error_vs_temperature(
    df: pd.DataFrame, path: str | Path, styles: Mapping[str, Style] | None = None
) -> Figure:
    """Relative error against the inputs' temperature at the seq_len with most temperatures."""
    df, device = _one_device(df, "error vs temperature")
    rows = df[(df["pass"] == "fwd") & (df["status"] == "ok") & (df["rel_err"] > 0)].copy()
    rows["temperature"] = rows["inputs_params"].map(
        lambda p: scaling.parse_params(p).get("temperature")
    )
    rows["temperature"] = pd.to_numeric(rows["temperature"], errors="coerce")
    rows = rows[rows["temperature"].notna()]
    if not len(rows) or rows["temperature"].nunique() < 2:
        raise SkipFigure(f"fewer than two input temperatures among ok fwd rows on {device}")
    per_len = rows.groupby("seq_len")["temperature"].nunique()
    seq_len = float(per_len[per_len == per_len.max()].index.max())
    rows = rows[rows["seq_len"] == seq_len]
    rows, exact_note = _drop_exact(rows)
    styles = styles or style_map(df)
    lines = [ln for ln in _line_groups(rows) if ln[2]["temperature"].nunique() >= 2]
    omitted = len(_line_groups(rows)) - len(lines)
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    for series, label, group in lines:
        curve = group.groupby("temperature")["rel_err"].median().sort_index()
        st = styles.get(series, Style(color_for(series), "-", "o"))
        ax.plot(
            curve.index,
            curve.to_numpy(),
            color=st.color,
            linestyle=st.linestyle,
            marker=st.marker,
            markersize=5,
            label=label,
        )
    temps = rows["temperature"]
    if temps.min() > 0 and temps.max() / temps.min() >= 8:
        ax.set_xscale("log")
        _plain_ticks(ax, temps.unique())
    ax.set_yscale("log")
    ax.set_xlabel("input temperature (scale of q·k; higher = sharper attention)")
    ax.set_ylabel("relative error vs exact (log scale)")
    ax.grid(True, alpha=0.25)
    note = f"{omitted} series run at one temperature not drawn" if omitted else ""
    _title(
        ax,
        "Error vs input temperature",
        rows,
        device,
        _join(f"n = {int(seq_len)}", exact_note, note),
    )
    return _finish(fig, ax, path)


def plot_error_vs_knob(
    df: pd.DataFrame, path: str | Path, styles: Mapping[str, Style] | None = None
) -> Figure:
    """One panel per approximation: its relative error against its own accuracy knob.

    The knob comes from :func:`knob_for`. Each panel uses the seq_len at which that variant has
    the most knob values, and the most common inputs setting.
    """
    df, device = _one_device(df, "error vs knob")
    ok = df[(df["pass"] == "fwd") & (df["status"] == "ok") & (df["rel_err"] > 0)]
    panels = []
    for variant in sorted(ok["variant"].unique()):
        knob = knob_for(variant)
        if not knob:
            continue
        rows = ok[ok["variant"] == variant].copy()
        rows["knob"] = pd.to_numeric(
            rows["params"].map(lambda p, k=knob: scaling.parse_params(p).get(k)), errors="coerce"
        )
        rows = rows[rows["knob"].notna()]
        if rows["knob"].nunique() < 2:
            continue
        rows, inputs = _most_common_inputs(rows)
        per_len = rows.groupby("seq_len")["knob"].nunique()
        seq_len = float(per_len[per_len == per_len.max()].index.max())
        rows = rows[rows["seq_len"] == seq_len]
        if rows["knob"].nunique() >= 2:
            panels.append((variant, knob, seq_len, rows))
    if not panels:
        raise SkipFigure(f"no approximation ran with two or more values of its knob on {device}")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False, sharey=True
    )
    for ax, (variant, knob, seq_len, rows) in zip(axes.flat, panels):
        labels = scaling.series_labels(rows, ignore={variant: [knob]})
        for i, (label, group) in enumerate(rows.groupby(labels, sort=True)):
            curve = group.groupby("knob")["rel_err"].median().sort_index()
            ax.plot(
                curve.index,
                curve.to_numpy(),
                color=color_for(variant),
                linestyle=LINESTYLES[i % len(LINESTYLES)],
                marker=MARKERS[i % len(MARKERS)],
                markersize=5,
                label=label,
            )
        if rows["knob"].min() > 0 and rows["knob"].max() / rows["knob"].min() >= 4:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_yscale("log")
        ax.set_title(f"{variant} (n = {int(seq_len)})", fontsize=9)
        ax.set_xlabel(knob)
        ax.grid(True, alpha=0.25)
        if rows.groupby(labels).ngroups > 1:
            ax.legend(fontsize=7, frameon=False)
    for ax in axes[:, 0]:
        ax.set_ylabel("relative error vs exact")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(f"Error vs each approximation's knob — {device}", fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return _finish(fig, axes.flat[0], path, legend=False)


def pareto_front(times: Sequence[float], errors: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats in both time and error, by increasing time."""
    order = sorted(range(len(times)), key=lambda i: (times[i], errors[i]))
    front, best = [], math.inf
    for i in order:
        if errors[i] < best:
            front.append(i)
            best = errors[i]
    return front


def plot_tradeoff(
    df: pd.DataFrame,
    path: str | Path,
    seq_len: float | None = None,
    styles: Mapping[str, Style] | None = None,
) -> Figure:
    """Error against forward time at one seq_len, one point per series, with the Pareto front.

    Args:
        df: Rows of one device.
        path: PNG to write.
        seq_len: Length to compare at (default: the largest at which the most series ran).
        styles: Series styles shared across figures.
    """
    df, device = _one_device(df, "trade-off")
    ok = df[
        (df["pass"] == "fwd") & (df["status"] == "ok") & (df["rel_err"] > 0) & (df["time_ms"] > 0)
    ]
    ok, inputs = _most_common_inputs(ok)
    if seq_len is None:
        seq_len = scaling.default_reference_seq_len(ok) if len(ok) else None
    rows = ok[ok["seq_len"] == seq_len] if seq_len is not None else ok.iloc[:0]
    if rows["series"].nunique() < 2:
        raise SkipFigure(f"fewer than two series with time and rel_err at one seq_len on {device}")
    styles = styles or style_map(df)
    points = rows.groupby(["variant", "series"], sort=True)[["time_ms", "rel_err"]].median()
    points["exact"] = [is_exact(v, rows[rows["variant"] == v]) for v, _ in points.index]
    approx = points[~points["exact"]]
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    for (variant, series), pt in approx.iterrows():
        st = styles.get(series, Style(color_for(str(variant)), "-", "o"))
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
        short = series[len(str(variant)) + 1 : -1] if series != variant else ""
        if short and "," not in short:  # one param: its value only ("k=16" crowded clusters)
            short = short.split("=", 1)[-1]
        if short:  # the knob value beside the point: the legend alone makes the eye hop
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
        st = styles.get(series, Style(color_for(str(variant)), "-", "o"))
        ax.axvline(
            pt["time_ms"],
            color=st.color,
            linestyle=st.linestyle,
            linewidth=1.2,
            label=f"{series} (exact, error {pt['rel_err']:.0e})",
            gid="exact",
            zorder=1,
        )
    front = pareto_front(points["time_ms"].tolist(), points["rel_err"].tolist())
    front_pts = points.iloc[front]
    if front_pts["exact"].any():  # the front ends at the fastest exact variant
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
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(points["time_ms"].min() / 1.4, points["time_ms"].max() * 2.0)  # room for labels
    ax.set_xlabel("forward time (ms, log scale) — left is faster")
    ax.set_ylabel("relative error vs exact (log scale) — lower is better")
    ax.grid(True, alpha=0.25)
    _title(ax, "Accuracy / speed trade-off", rows, device, f"n = {int(seq_len)}; inputs {inputs}")
    return _finish(fig, ax, path)


def plot_rate(
    df: pd.DataFrame,
    path: str | Path,
    pass_: str = "fwd",
    styles: Mapping[str, Style] | None = None,
) -> Figure:
    """Achieved FLOP rate as a fraction of the device's measured matmul rate vs seq_len."""
    df, device = _one_device(df, "rate")
    rows = df[(df["pass"] == pass_) & (df["status"] == "ok")].copy()
    rows["rate_frac"] = rows["tflops"] / rows["matmul_tflops"]
    rows = rows[rows["rate_frac"] > 0]
    if not len(rows):
        raise SkipFigure(f"no ok {pass_} rows with tflops and matmul_tflops on {device}")
    styles = styles or style_map(df)
    lines, omitted = _multi_length(_line_groups(rows), "rate_frac")
    if not lines:
        raise SkipFigure(f"no series with a rate at two or more lengths on {device}")
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    for series, label, group in lines:
        curve = scaling._per_seq_len(group, "rate_frac")
        st = styles.get(series, Style(color_for(series), "-", "o"))
        ax.plot(
            curve.index,
            curve.to_numpy(),
            color=st.color,
            linestyle=st.linestyle,
            marker=st.marker,
            markersize=5,
            label=label,
        )
    ax.set_xscale("log", base=2)
    frac = rows["rate_frac"]
    if frac.max() / frac.min() > 30:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, max(1.05, frac.max() * 1.1) if frac.max() > 0.8 else frac.max() * 1.15)
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    _seq_len_ticks(ax, rows["seq_len"].unique())
    matmul = rows["matmul_tflops"].median()
    ax.set_xlabel("sequence length n (tokens, log scale)")
    ax.set_ylabel("achieved FLOP/s ÷ measured matmul FLOP/s")
    ax.grid(True, alpha=0.25)
    _title(
        ax,
        f"Achieved rate ({PASS_NAMES.get(pass_, pass_)}) as a fraction of the device's "
        "matmul rate",
        rows,
        device,
        _join(f"matmul {matmul:.3g} TFLOP/s", _omitted_text(omitted)),
    )
    return _finish(fig, ax, path)


def plot_realmodel(
    df: pd.DataFrame, path: str | Path, styles: Mapping[str, Style] | None = None
) -> Figure:
    """Real-model rows: sentence-embedding cosine to the exact model vs each variant's knob."""
    df, device = _one_device(df, "realmodel")
    needed = ("embed_cosine", "knob", "knob_value")
    if any(c not in df.columns for c in needed):
        raise SkipFigure("no realmodel rows (columns embed_cosine, knob, knob_value absent)")
    rows = df.copy()
    for col in ("embed_cosine", "knob_value"):
        rows[col] = pd.to_numeric(rows[col], errors="coerce")
    rows = rows[rows["embed_cosine"].notna() & rows["knob_value"].notna()]
    rows = rows[rows["status"].isin(["ok"]) | rows["status"].isna()]
    if not len(rows):
        raise SkipFigure(f"no realmodel rows with embed_cosine and knob_value on {device}")
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    for (variant, knob), group in rows.groupby(["variant", "knob"], sort=True):
        curve = group.groupby("knob_value")["embed_cosine"].median().sort_index()
        ax.plot(
            curve.index,
            curve.to_numpy(),
            color=color_for(str(variant)),
            marker="o",
            markersize=5,
            label=f"{variant} ({knob})",
        )
    kv = rows["knob_value"]
    if kv.min() > 0 and kv.max() / kv.min() >= 8:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("knob value (the knob is named in the legend)")
    ax.set_ylabel("cosine of sentence embedding to exact model")
    ax.grid(True, alpha=0.25)
    ax.set_title(f"Real model: embedding fidelity vs knob\n{device}", fontsize=10, loc="left")
    return _finish(fig, ax, path)


# ------------------------------------------------------------------------------ heatmaps
def plot_attention_heatmaps(
    tokens: Sequence[str],
    exact: Any,
    matrices: Mapping[str, Any],
    path: str | Path,
    title: str = "",
) -> Figure:
    """The exact softmax matrix beside each variant's effective matrix, tokens on the axes.

    All panels share one colour scale (so a washed-out panel means diffuse attention, not a
    different scale); a scale that dips below zero shows approximations that produce negative
    weights (Nyström can) instead of clipping them away.

    Args:
        tokens: The n tokens (queries on rows, keys on columns).
        exact: (n, n) exact attention matrix.
        matrices: Variant name -> (n, n) effective matrix (its output for V = identity).
        path: PNG to write.
        title: Figure title (e.g. the sentence, layer and head).
    """
    panels = [("exact softmax", np.asarray(exact, dtype=float))]
    panels += [(name, np.asarray(m, dtype=float)) for name, m in matrices.items()]
    n = len(tokens)
    for name, m in panels:
        if m.shape != (n, n):
            raise ValueError(f"heatmap {name!r}: shape {m.shape} does not match {n} tokens")
    vmin = min(0.0, min(float(np.nanmin(m)) for _, m in panels))
    vmax = max(float(np.nanmax(m)) for _, m in panels)
    if vmin < 0:  # negative weights exist: diverging map, white at zero, so they read as such
        cmap, norm = "RdBu_r", matplotlib.colors.TwoSlopeNorm(0.0, vmin, vmax)
    else:
        cmap, norm = "viridis", matplotlib.colors.Normalize(0.0, vmax)
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    side = max(2.8, 0.32 * n + 1.2)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(side * ncols + 1.0, side * nrows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for ax, (name, m) in zip(axes.flat, panels):
        image = ax.imshow(m, cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_xticks(range(n))
        ax.set_xticklabels(tokens, rotation=90, fontsize=8)
        ax.set_yticks(range(n))
        ax.set_yticklabels(tokens, fontsize=8)
        base = name.split(" (")[0]  # "longformer (window=2)" is coloured as longformer
        ax.set_title(
            name,
            fontsize=9,
            color=PALETTE.get(base, "black")
            if base in PALETTE
            else color_for(base)
            if name != "exact softmax"
            else "black",
        )
        ax.set_xlabel("key token", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("query token", fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.8, pad=0.02, label="attention weight")
    return _finish(fig, axes.flat[0], path, legend=False)


#: Small-knob settings for heatmaps of a ~10-token sentence (defaults suit thousands of tokens).
HEATMAP_PARAMS: dict[str, dict[str, Any]] = {
    "local": {"window": 2},
    "longformer": {"window": 2, "num_global": 1},
    "linformer": {"k": 4},
    "performer": {"nb_features": 32, "seed": 0},
    "nystrom": {"num_landmarks": 4},
    "bigbird": {"seed": 0},
}


def heatmap_figure(
    path: str | Path,
    variant_names: Sequence[str],
    sentence: str = "The cat sat on the mat.",
    layer: int = 0,
    head: int = 0,
) -> Figure:
    """Heatmaps from pretrained MiniLM via ``harness.realmodel.experiment.attention_heatmap_data``.

    Variants that cannot be built for the sentence's length are left out with a logged reason.
    Raises :class:`SkipFigure` when the real-model extra (transformers, the weights) is missing.
    """
    try:
        import variants
        from harness.realmodel import experiment as realmodel  # noqa: PLC0415 - optional, needs transformers
    except Exception as exc:  # noqa: BLE001 - any import failure means no heatmap
        raise SkipFigure(f"real-model heatmaps unavailable: {type(exc).__name__}: {exc}") from exc
    try:
        tokens, _, _ = realmodel.attention_heatmap_data(
            sentence=sentence, layer=layer, head=head, variants={}
        )
    except Exception as exc:  # noqa: BLE001 - missing transformers/weights: say why, go on
        raise SkipFigure(f"real-model heatmaps unavailable: {type(exc).__name__}: {exc}") from exc
    built = {}
    for name in variant_names:
        try:
            if variants.get_class(name).exact:
                continue
            params = HEATMAP_PARAMS.get(name, {})
            shown = ", ".join(f"{k}={v}" for k, v in params.items() if k != "seed")
            label = f"{name} ({shown})" if shown else name
            built[label] = variants.create(name, seq_len=len(tokens), **params)
        except Exception as exc:  # noqa: BLE001 - one variant failing leaves the others
            log.warning("heatmap: variant %s left out: %s: %s", name, type(exc).__name__, exc)
    tokens, exact, mats = realmodel.attention_heatmap_data(
        sentence=sentence, layer=layer, head=head, variants=built
    )
    title = f"“{sentence}” — MiniLM layer {layer}, head {head}"
    return plot_attention_heatmaps(tokens, exact, mats, path, title)


# ------------------------------------------------------------------------------- driver
#: Names of the per-device figures of :func:`plot_all`, in report order.
FIGURES: tuple[str, ...] = (
    "time_fwd",
    "time_fwd_bwd",
    "memory_fwd",
    "memory_fwd_bwd",
    "error_vs_seq_len",
    "error_vs_temperature",
    "error_vs_knob",
    "tradeoff",
    "rate_fwd",
    "realmodel",
)


def attention_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of attention points: without those of ``task == "realmodel"``."""
    if "task" not in df.columns:
        return df
    return df[df["task"].astype(str) != "realmodel"]


def plot_all(
    df: pd.DataFrame, out_dir: str | Path, only: Sequence[str] | None = None
) -> list[FigureResult]:
    """Every figure per device into ``out_dir``; returns what was drawn and what was skipped.

    File names are ``<figure>.png`` with one device and ``<figure>__<device slug>.png`` with
    several. Figures are closed after saving.

    Args:
        df: Rows (any number of devices).
        out_dir: Folder for the PNGs (created).
        only: Figure names to draw (default all of :data:`FIGURES`).
    """
    df = scaling.prepare(df)
    out_dir = Path(out_dir)
    styles = style_map(df)
    devices = sorted(df["device_key"].dropna().unique())
    makers: list[tuple[str, Callable[[pd.DataFrame, Path], Figure]]] = [
        ("time_fwd", lambda d, p: plot_time(d, p, "fwd", styles)),
        ("time_fwd_bwd", lambda d, p: plot_time(d, p, "fwd_bwd", styles)),
        ("memory_fwd", lambda d, p: plot_memory(d, p, "fwd", styles)),
        ("memory_fwd_bwd", lambda d, p: plot_memory(d, p, "fwd_bwd", styles)),
        ("error_vs_seq_len", lambda d, p: plot_error(d, p, styles)),
        ("error_vs_temperature", lambda d, p: plot_error_vs_temperature(d, p, styles)),
        ("error_vs_knob", lambda d, p: plot_error_vs_knob(d, p, styles)),
        ("tradeoff", lambda d, p: plot_tradeoff(d, p, styles=styles)),
        ("rate_fwd", lambda d, p: plot_rate(d, p, "fwd", styles)),
        ("realmodel", lambda d, p: plot_realmodel(d, p, styles)),
    ]
    results = []
    for device in devices:
        rows = df[df["device_key"] == device]
        suffix = f"__{slug(device)}" if len(devices) > 1 else ""
        for name, make in makers:
            if only is not None and name not in only:
                continue
            path = out_dir / f"{name}{suffix}.png"
            # real-model rows (whole-model time at fixed lengths) are not attention points
            subset = rows if name == "realmodel" else attention_rows(rows)
            try:
                if not len(subset):
                    raise SkipFigure("no attention points (only real-model rows)")
                fig = make(subset, path)
            except SkipFigure as exc:
                log.info("figure %s skipped: %s", name, exc)
                results.append(FigureResult(name, device, skipped=str(exc)))
                continue
            plt.close(fig)
            results.append(FigureResult(name, device, path=path))
    return results
