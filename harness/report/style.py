"""How every figure looks: the one import of the figure modules of every task
(``harness/tasks/<name>/``).

The helpers live by concern and are re-exported here: :mod:`harness.report.palette` (one colour
per variant, a line style per series), :mod:`harness.report.labels` (labels, titles and notes
from the rows alone) and :mod:`harness.report.drawing` (lines against the length, ticks, saving,
:class:`SkipFigure`).
"""

from __future__ import annotations

from harness.report.drawing import (
    DPI,
    FIGSIZE,
    SkipFigure,
    draw_curve,
    draw_series,
    finish,
    label_and_save,
    length_ticks,
    per_length,
    plain_ticks,
    series_vs_length,
)
from harness.report.labels import (
    CONTEXT_COLUMNS,
    FIT_KEYS,
    INPUT_NAMES,
    LENGTH_LABEL,
    PASS_NAMES,
    Line,
    context_text,
    inputs_label,
    join,
    line_groups,
    most_common_inputs,
    multi_length,
    one_device,
    slope_text,
    slug,
    title,
)
from harness.report.palette import (
    EXTRA_COLORS,
    LINESTYLES,
    MARKERS,
    PALETTE,
    Style,
    color_for,
    natural_key,
    nth_style,
    style_for,
    style_map,
)

__all__ = [
    "CONTEXT_COLUMNS",
    "DPI",
    "EXTRA_COLORS",
    "FIGSIZE",
    "FIT_KEYS",
    "INPUT_NAMES",
    "LENGTH_LABEL",
    "LINESTYLES",
    "Line",
    "MARKERS",
    "PALETTE",
    "PASS_NAMES",
    "SkipFigure",
    "Style",
    "color_for",
    "context_text",
    "draw_curve",
    "draw_series",
    "finish",
    "inputs_label",
    "join",
    "label_and_save",
    "length_ticks",
    "line_groups",
    "most_common_inputs",
    "multi_length",
    "natural_key",
    "nth_style",
    "one_device",
    "per_length",
    "plain_ticks",
    "series_vs_length",
    "slope_text",
    "slug",
    "style_for",
    "style_map",
    "title",
]
