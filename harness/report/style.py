"""How every figure looks: one colour per variant, a line style per series, labels from rows.

Every figure keeps one colour per variant (:func:`color_for`: a fixed palette for the built-ins,
a stable hash-picked colour for plugins), so a reader who learnt "performer is green" in the time
plot finds it green everywhere. Several configurations of one variant (series, see
:mod:`harness.analysis.series`) share the colour and differ in line style and marker.

Labels, titles and notes come from the rows alone (their columns and ``params`` mappings); the
helpers here are shared by every task's figure modules (``harness/tasks/<name>/``).
"""

from __future__ import annotations

import re
import textwrap
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.analysis.series import as_mapping, per_kv_len, prepare
from harness.analysis.series import most_common_inputs as rows_of_common_inputs

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
    "hedgehog": "#bcbd22",
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
PASS_NAMES = {"fwd": "forward", "bwd": "backward", "fwd_bwd": "forward + backward"}
#: Context columns: equal across a figure's rows they go to the subtitle, else into labels.
CONTEXT_COLUMNS: tuple[str, ...] = ("dtype", "causal", "batch", "heads", "head_dim")
LENGTH_LABEL = "sequence length n (tokens, log scale)"
DPI = 110
#: Size (inches) of a one-panel figure.
FIGSIZE = (8.5, 5.2)

#: One drawn line: (series, legend label, its rows).
Line = tuple[str, str, pd.DataFrame]


class SkipFigure(Exception):
    """A figure's data is absent; the message says what is missing."""


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
    df = prepare(df)
    styles: dict[str, Style] = {}
    counts = df.groupby(["variant", "series"]).size().reset_index(name="rows")
    for variant, group in counts.groupby("variant", sort=True):
        # The configuration with the most rows (the one swept over n) gets the solid line.
        order = sorted(
            zip(group["series"], group["rows"]), key=lambda t: (-t[1], natural_key(t[0]))
        )
        for i, (series, _) in enumerate(order):
            styles[series] = nth_style(str(variant), i)
    return styles


def nth_style(variant: str, i: int) -> Style:
    """Style of the ``i``-th configuration of ``variant``: its colour, the i-th line and marker."""
    return Style(color_for(variant), LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)])


def style_for(styles: Mapping[str, Style], series: str, variant: str | None = None) -> Style:
    """The style of ``series``; a series the map lacks gets its variant's colour, solid."""
    return styles.get(series) or Style(color_for(variant or series), "-", "o")


def slug(text: str) -> str:
    """A file-name-safe form of ``text``."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "device"


# ----------------------------------------------------------------------------- drawing
def draw_curve(ax: Any, curve: pd.Series, style: Style, label: str, scale: float = 1.0) -> None:
    """One series as a line with markers: ``curve`` maps x (its index) to y."""
    ax.plot(
        curve.index,
        curve.to_numpy(dtype=float) * scale,
        color=style.color,
        linestyle=style.linestyle,
        marker=style.marker,
        markersize=5,
        linewidth=1.6,
        label=label,
    )


def draw_series(
    ax: Any,
    lines: Sequence[Line],
    curve: Callable[[pd.DataFrame], pd.Series],
    styles: Mapping[str, Style],
    scale: float = 1.0,
) -> None:
    """Every line of ``lines`` in its series' style; ``curve(rows)`` gives its points."""
    for series, label, rows in lines:
        draw_curve(ax, curve(rows), style_for(styles, series), label, scale)


def per_length(metric: str) -> Callable[[pd.DataFrame], pd.Series]:
    """The curve of :func:`draw_series` that plots ``metric``'s median against kv_len."""
    return lambda rows: per_kv_len(rows, metric)


def series_vs_length(
    rows: pd.DataFrame,
    metric: str,
    styles: Mapping[str, Style],
    device: str,
    scale: float = 1.0,
    relabel: Callable[[list[Line]], list[Line]] | None = None,
) -> tuple[Figure, Any, str]:
    """A new figure with each series' median ``metric`` against kv_len (log2 axis).

    Returns:
        ``(figure, axes, note)``, the note naming series left out for having one length.

    Raises:
        SkipFigure: No series has ``metric`` at two or more lengths.
    """
    lines, omitted = multi_length(line_groups(rows), metric)
    if not lines:
        raise SkipFigure(f"no series with {metric} at two or more lengths on {device}")
    fig, ax = plt.subplots(figsize=FIGSIZE)
    draw_series(ax, relabel(lines) if relabel else lines, per_length(metric), styles, scale)
    ax.set_xscale("log", base=2)
    return fig, ax, omitted


def length_ticks(ax: Any, lengths: Sequence[float]) -> None:
    """Tick the measured lengths as plain integers: a reader wants 4096, not 10^3.6."""
    lengths = sorted({int(x) for x in lengths if np.isfinite(x)})
    if 1 < len(lengths) <= 12:
        ax.set_xticks(lengths)
        ax.set_xticklabels([str(n) for n in lengths])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def plain_ticks(ax: Any, values: Sequence[float]) -> None:
    """Tick the measured values of a log x axis as plain numbers (0.25, 1, 4, not 10^-0.6)."""
    values = sorted({float(v) for v in values})
    if 1 < len(values) <= 12:
        ax.set_xticks(values)
        ax.set_xticklabels([f"{v:g}" for v in values])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def finish(fig: Figure, ax: Any, path: str | Path, legend: bool = True) -> Figure:
    """Legend outside the axes (never over data), tight layout, save."""
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return fig


def label_and_save(
    fig: Figure,
    ax: Any,
    path: str | Path,
    labels: tuple[str, str],
    heading: str,
    rows: pd.DataFrame,
    device: str,
    note: str = "",
) -> Figure:
    """Axis labels ``(x, y)``, a light grid, the title of :func:`title`, then :func:`finish`."""
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.grid(True, alpha=0.25)
    title(ax, heading, rows, device, note)
    return finish(fig, ax, path)


# ------------------------------------------------------------------------ labels from rows
def one_device(df: pd.DataFrame, what: str) -> tuple[pd.DataFrame, str]:
    """``df`` prepared, and its one device; rows of several devices raise ``ValueError``."""
    df = prepare(df)
    devices = df["device_key"].dropna().unique()
    if len(devices) > 1:
        raise ValueError(f"{what}: rows from {len(devices)} devices; plot_all splits them")
    return df, (str(devices[0]) if len(devices) else "unknown device")


def context_text(df: pd.DataFrame) -> str:
    """The shape shared by every row, e.g. 'float32, non-causal, batch 1, 8 heads, head_dim 64'."""
    formats = {"dtype": "{}", "batch": "batch {}", "heads": "{} heads", "head_dim": "head_dim {}"}
    parts = []
    for col in CONTEXT_COLUMNS:
        values = df[col].dropna().unique()
        if len(values) != 1 or (col in ("batch", "heads", "head_dim") and values[0] < 0):
            continue
        if col == "causal":
            parts.append("causal" if values[0] else "non-causal")
        else:
            parts.append(formats[col].format(values[0]))
    return ", ".join(parts)


def line_groups(df: pd.DataFrame) -> list[Line]:
    """(series, label, rows) per drawn line; context columns that vary are added to the label."""
    varying = [c for c in CONTEXT_COLUMNS if df[c].nunique() > 1]
    out = []
    for key, rows in df.groupby(["series"] + varying, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        extra = [f"{c}={v}" for c, v in zip(varying, key[1:])]
        label = key[0] + (f" [{', '.join(extra)}]" if extra else "")
        out.append((key[0], label, rows))
    return sorted(out, key=lambda line: natural_key(line[1]))


def multi_length(lines: list[Line], metric: str) -> tuple[list[Line], str]:
    """Lines with ok values at two or more lengths, and a note on those left out.

    A series measured at one length only (a knob or temperature sweep at fixed n) has no
    curve against n; drawing it as a lone dot with a legend entry would only add clutter.
    """
    keep = [ln for ln in lines if len(per_kv_len(ln[2], metric)) >= 2]
    omitted = len(lines) - len(keep)
    return keep, (f"{omitted} series measured at a single length not drawn" if omitted else "")


def join(*parts: str) -> str:
    """The non-empty parts joined by '; ' (subtitle notes)."""
    return "; ".join(p for p in parts if p)


#: Readable names of input generators; any other name is shown as it is.
INPUT_NAMES: dict[str, str] = {"minilm": "MiniLM q,k,v (real text)"}
#: Input parameters that say what the input was fitted to (a structured input's statistics).
FIT_KEYS: tuple[str, ...] = ("fit", "fitted_to", "fit_to")


def _fit_source(fit: Any) -> str:
    """What a fitted input was fitted to: the model its ``fit`` entry names (up to the first
    comma: "all-MiniLM-L6-v2 layers 0-5 x 12 heads, 16 pydoc passages" is too long for a
    title), or "a real model"."""
    if isinstance(fit, Mapping):
        for key in ("model", "source", "name", "to"):
            if isinstance(fit.get(key), str) and fit[key]:
                return fit[key].split(",")[0]
        return "a real model"
    return str(fit).split(",")[0]


def inputs_label(name: Any, params: Any) -> str:
    """A reader's label of an inputs setting: its name and key (scalar) parameters.

    ``minilm`` reads "MiniLM q,k,v (real text)"; an input whose parameters say what it was
    fitted to (:data:`FIT_KEYS`) reads "<name> (fitted to <model>, ...)". Per-head lists and
    free text are left out (the row keeps them); ``gaussian`` with temperature 1 reads
    "gaussian (temperature=1)".
    """
    base = INPUT_NAMES.get(str(name), str(name)) if isinstance(name, str) and name else "unknown"
    params = as_mapping(params)
    parts = [
        f"fitted to {_fit_source(params[k])}" for k in FIT_KEYS if params.get(k) not in (None, "")
    ]
    for key, value in sorted(params.items()):
        if key in FIT_KEYS or key == "text" or value is None or isinstance(value, (list, dict)):
            continue
        parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    if not parts:
        return base
    if base.endswith(")"):
        return f"{base[:-1]}; {', '.join(parts)})"
    return f"{base} ({', '.join(parts)})"


def most_common_inputs(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Rows of the most frequent inputs setting and its :func:`inputs_label` (errors depend on
    the inputs, so a figure or table never pools several)."""
    rows = rows_of_common_inputs(df)
    if not len(rows):
        return rows, ""
    return rows, inputs_label(rows["inputs"].iloc[0], rows["inputs_params"].iloc[0])


def _interval(low: float, high: float) -> str:
    """``[0.94, 1.07]``; an open end reads ∞."""
    lo = "−∞" if low == -np.inf else f"{low:.2f}"
    hi = "∞" if high == np.inf else f"{high:.2f}"
    return f"[{lo}, {hi}]"


def slope_text(fit: Mapping[str, Any], with_range: bool = True) -> str:
    """A fitted slope for a table or legend (fields of
    :class:`harness.analysis.fits.ScalingFit`); ``with_range=False`` names the range only
    where it is not every length (curved series).

    ``1.00 [0.94, 1.07] over 256–16384`` (the asymptotic exponent over every length);
    ``1.12 [1.10, 1.13] over 2048–16384, curved`` (the local slope at the top, residuals
    curved); ``0.00 [-0.01, 0.01] over 256–16384, no growth measured`` (flat: a constant fits
    as well, the interval is the log-log slope's); ``2.26 (3 lengths: too few for an
    interval)``; ``–`` when nothing was fitted.
    """
    slope = fit.get("slope")
    if slope is None or not np.isfinite(slope):
        return "–"
    text = f"{slope:.2f}"
    low, high = fit.get("ci_low"), fit.get("ci_high")
    if low is not None and high is not None and not (np.isnan(low) or np.isnan(high)):
        text += f" {_interval(low, high)}"
    elif fit.get("note"):
        return f"{text} ({fit['note']})"
    span = f" over {int(fit['range_low'])}–{int(fit['range_high'])}"
    curved, flat = fit.get("curved"), fit.get("flat")
    if isinstance(curved, (bool, np.bool_)) and curved:  # the range is the point: the top
        return f"{text}{span}, curved"
    if isinstance(flat, (bool, np.bool_)) and flat:
        return f"{text}{span if with_range else ''}, no growth measured"
    return text + span if with_range else text


def title(ax: Any, text: str, df: pd.DataFrame, device: str, extra: str = "") -> None:
    """Title with a subtitle of the device, the shared context and ``extra`` notes."""
    sub = textwrap.fill(join(device, context_text(df), extra), width=110)
    ax.set_title(f"{text}\n{sub}", fontsize=10, loc="left")
