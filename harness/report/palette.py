"""One colour per variant and a line style per series: how each line of a figure is drawn.

Every figure keeps one colour per variant (:func:`color_for`: a fixed palette for the built-ins,
a stable hash-picked colour for plugins), so a reader who learnt "performer is green" in the time
plot finds it green everywhere. Several configurations of one variant (series, see
:mod:`harness.analysis.series`) share the colour and differ in line style and marker.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from harness.analysis.series import natural_key, prepare

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
    "retention": "#5254a3",
    "deltanet": "#b35806",
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


@dataclass(frozen=True)
class Style:
    """How one series is drawn."""

    color: str
    linestyle: str
    marker: str


def color_for(variant: str) -> str:
    """The colour of ``variant`` in every figure (stable across runs and machines)."""
    if variant in PALETTE:
        return PALETTE[variant]
    return EXTRA_COLORS[zlib.crc32(variant.encode()) % len(EXTRA_COLORS)]


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
