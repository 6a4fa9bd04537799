"""The realmodel figures: embedding fidelity against each knob, and attention heatmaps.

Both are drawn from files only. The fidelity figure reads the realmodel rows (``knob``,
``knob_value``, ``embed_cosine``), with a grey dash-dotted reference level where the rows carry
``embed_cosine_unrelated`` (exact MiniLM's cosine between different texts of one length). The
heatmaps read the ``heatmap.json`` files that realmodel points write beside their rows::

    {"sentence": str, "layer": int, "head": int, "tokens": [str], "exact": [[float]],
     "panels": [{"variant": str, "label": str, "matrix": [[float]]}],
     "skipped": [{"variant": str, "reason": str}]}   (optional)

Files of one (sentence, layer, head) are merged into one figure, the first panel of each label
winning; a variant listed as skipped in one file and drawn in none is named with its reason.
Nothing here loads a model or builds a variant.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.colors
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.analysis.series import series_labels
from harness.report.style import SkipFigure, Style, color_for, finish, natural_key, one_device

HEATMAP_FILE = "heatmap.json"
#: Style of the unrelated-text reference level.
REFERENCE_STYLE = {"color": "#7f7f7f", "linestyle": "-.", "linewidth": 1.1, "zorder": 1}
HEATMAP_KEYS = ("sentence", "layer", "head", "tokens", "exact", "panels")


def plot_realmodel(
    df: pd.DataFrame, path: str | Path, styles: Mapping[str, Style] | None = None
) -> Figure:
    """Real-model rows: sentence-embedding cosine to the exact model vs each variant's knob."""
    df, device = one_device(df, "realmodel")
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
    # the label without the knob keeps "untrained" and eps (series_labels)
    ignore = {v: [k] for v, k in zip(rows["variant"], rows["knob"])}
    rows = rows.assign(label=series_labels(rows, ignore))
    for (label, variant, knob), group in rows.groupby(["label", "variant", "knob"], sort=True):
        curve = group.groupby("knob_value")["embed_cosine"].median().sort_index()
        ax.plot(
            curve.index,
            curve.to_numpy(),
            color=color_for(str(variant)),
            marker="o",
            markersize=5,
            label=f"{label} ({knob})",
        )
    if "embed_cosine_unrelated" in rows.columns:
        unrelated = pd.to_numeric(rows["embed_cosine_unrelated"], errors="coerce").dropna()
        if len(unrelated):
            level = float(unrelated.median())
            label = f"exact model, unrelated texts: {level:.3g}"
            ax.axhline(level, gid="baseline_unrelated", label=label, **REFERENCE_STYLE)
    kv = rows["knob_value"]
    if kv.min() > 0 and kv.max() / kv.min() >= 8:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("knob value (the knob is named in the legend)")
    ax.set_ylabel("cosine of sentence embedding to exact model")
    ax.grid(True, alpha=0.25)
    ax.set_title(f"Real model: embedding fidelity vs knob\n{device}", fontsize=10, loc="left")
    return finish(fig, ax, path)


# ------------------------------------------------------------------------------ heatmaps
def plot_attention_heatmaps(
    tokens: Sequence[str],
    exact: Any,
    matrices: Mapping[str, Any],
    path: str | Path,
    title: str = "",
    variants: Mapping[str, str] | None = None,
) -> Figure:
    """The exact softmax matrix beside each variant's effective matrix, tokens on the axes.

    All panels share one colour scale (so a washed-out panel means diffuse attention, not a
    different scale); a scale that dips below zero shows approximations that produce negative
    weights (Nyström can) instead of clipping them away.

    Args:
        tokens: The n tokens (queries on rows, keys on columns).
        exact: (n, n) exact attention matrix.
        matrices: Panel label -> (n, n) effective matrix (its output for V = identity).
        path: PNG to write.
        title: Figure title (e.g. the sentence, layer and head).
        variants: Panel label -> variant name, for the title colour (default: the label).
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
    for i, (ax, (name, m)) in enumerate(zip(axes.flat, panels)):
        image = ax.imshow(m, cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_xticks(range(n))
        ax.set_xticklabels(tokens, rotation=90, fontsize=8)
        ax.set_yticks(range(n))
        ax.set_yticklabels(tokens, fontsize=8)
        color = "black" if i == 0 else color_for((variants or {}).get(name, name))
        ax.set_title(name, fontsize=9, color=color)
        ax.set_xlabel("key token", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("query token", fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.8, pad=0.02, label="attention weight")
    return finish(fig, axes.flat[0], path, legend=False)


@dataclass
class Heatmaps:
    """The merged heatmap data of one (sentence, layer, head)."""

    sentence: str
    layer: int
    head: int
    tokens: list[str]
    exact: list[list[float]]
    #: Panel label -> (variant, matrix); the first file that has a label wins.
    panels: dict[str, tuple[str, list[list[float]]]] = field(default_factory=dict)
    #: Variant -> why the experiment drew no panel for it.
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """The figure's title: the sentence, layer and head (the experiment runs MiniLM)."""
        return f"“{self.sentence}” — MiniLM layer {self.layer}, head {self.head}"

    def not_drawn(self) -> dict[str, str]:
        """Variant -> reason, for the skipped variants that no file drew."""
        drawn = {variant for variant, _ in self.panels.values()}
        return {v: r for v, r in sorted(self.skipped.items()) if v not in drawn}


def find_heatmap_files(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Every heatmap.json below the folders (for a file given, below its folder), sorted."""
    found: set[Path] = set()
    for folder in folders:
        p = Path(folder)
        root = p.parent if p.is_file() else p
        if root.is_dir():
            found.update(root.rglob(HEATMAP_FILE))
    return sorted(found)


def _read_heatmap(path: Path) -> dict[str, Any] | None:
    """One heatmap.json, or None (with a warning naming the file) when it breaks the contract."""
    try:
        data = json.loads(path.read_text())
        missing = [k for k in HEATMAP_KEYS if k not in data]
        if missing:
            raise ValueError(f"keys {', '.join(missing)} missing")
        if not all({"variant", "label", "matrix"} <= set(p) for p in data["panels"]):
            raise ValueError("a panel lacks its variant, label or matrix")
        n = len(data["tokens"])
        matrices = [data["exact"]] + [p["matrix"] for p in data["panels"]]
        if any(np.asarray(m, dtype=float).shape != (n, n) for m in matrices):
            raise ValueError(f"a matrix is not {n} x {n} (one row and column per token)")
    except (OSError, ValueError, TypeError) as exc:
        warnings.warn(f"{path}: not a heatmap file ({exc}); skipped", stacklevel=3)
        return None
    return data


def load_heatmaps(paths: Iterable[Path]) -> list[Heatmaps]:
    """The heatmap files grouped by (sentence, layer, head), panels merged, in file order."""
    groups: dict[tuple[str, int, int], Heatmaps] = {}
    for path in paths:
        data = _read_heatmap(path)
        if data is None:
            continue
        key = (str(data["sentence"]), int(data["layer"]), int(data["head"]))
        group = groups.setdefault(key, Heatmaps(*key, list(data["tokens"]), data["exact"]))
        if list(data["tokens"]) != group.tokens:
            warnings.warn(f"{path}: tokens differ from an earlier file; skipped", stacklevel=2)
            continue
        for panel in data["panels"]:
            group.panels.setdefault(str(panel["label"]), (str(panel["variant"]), panel["matrix"]))
        for item in data.get("skipped") or []:
            group.skipped.setdefault(str(item.get("variant")), str(item.get("reason")))
    return list(groups.values())


def draw_heatmaps(
    folders: Iterable[str | os.PathLike], out_dir: str | Path
) -> list[tuple[Path, Heatmaps]]:
    """One PNG per (sentence, layer, head) of the heatmap.json files below ``folders``.

    Returns:
        (path, data) per figure: ``heatmaps.png`` for one, ``heatmaps-<i>.png`` for several.

    Raises:
        SkipFigure: No usable heatmap.json was found.
    """
    groups = load_heatmaps(find_heatmap_files(folders))
    if not groups:
        raise SkipFigure(f"no {HEATMAP_FILE} below the folders (realmodel points write them)")
    drawn = []
    for i, group in enumerate(groups, 1):
        path = Path(out_dir) / ("heatmaps.png" if len(groups) == 1 else f"heatmaps-{i}.png")
        labels = sorted(group.panels, key=natural_key)
        fig = plot_attention_heatmaps(
            group.tokens,
            group.exact,
            {label: group.panels[label][1] for label in labels},
            path,
            group.title,
            variants={label: group.panels[label][0] for label in labels},
        )
        plt.close(fig)
        drawn.append((path, group))
    return drawn
