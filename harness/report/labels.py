"""Labels, titles and notes of figures, from the rows alone.

Everything here reads the rows' columns and ``params`` mappings: the shape every row shares (the
subtitle), what sets one drawn line apart (its label), a reader's name of an inputs setting and
a fitted slope as text. Shared by every task's figure and table modules
(``harness/tasks/<name>/``).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis.series import as_mapping, per_kv_len, prepare
from harness.analysis.series import most_common_inputs as rows_of_common_inputs
from harness.report.palette import natural_key

PASS_NAMES = {"fwd": "forward", "bwd": "backward", "fwd_bwd": "forward + backward"}
#: Context columns: equal across a figure's rows they go to the subtitle, else into labels.
CONTEXT_COLUMNS: tuple[str, ...] = ("dtype", "causal", "batch", "heads", "head_dim")
LENGTH_LABEL = "sequence length n (tokens, log scale)"

#: One drawn line: (series, legend label, its rows).
Line = tuple[str, str, pd.DataFrame]


def slug(text: str) -> str:
    """A file-name-safe form of ``text``."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "device"


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
