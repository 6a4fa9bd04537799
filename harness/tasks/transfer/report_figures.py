"""The transfer figure: sentence-embedding cosine to the exact model against each knob value.

One figure per device with transfer rows (pairs of :mod:`harness.tasks.transfer.
report_markdown`). Each transferable variant draws two curves in its colour: before fitting
dashed, after fitting solid (a variant without a knob, such as Hedgehog, draws two horizontal
levels). Beside them, dotted, the untrained curves of the realmodel rows in the same folders of
every approximation that has nothing to fit (sliding windows, Nystrom, ...): the cosine at the
transfer texts' length where those rows carry it (``embed_cosine_by_length``), else their mean
over lengths. Those rows come from other texts (the realmodel points'), so the comparison is of
size, not of decimals; the title says which cosine they show. A grey dash-dotted level is the
reference: exact MiniLM's mean cosine between *different* held-out passages
(``embed_cosine_unrelated``), what an embedding cosine of unrelated text comes to.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
from matplotlib.figure import Figure

from harness.analysis.rows import parse_json
from harness.analysis.series import is_false, prepare, series_labels
from harness.report.markdown import fmt
from harness.report.sections import FigureResult, draw_one, task_rows
from harness.report.style import FIGSIZE, SkipFigure, color_for, finish, slug, title
from harness.tasks.transfer.report_markdown import (
    STAGES,
    is_transfer,
    transfer_pairs,
)

#: Name of the transfer figure of :func:`plot_transfer`.
FIGURE = "transfer_cosine"
#: Line style of each kind of curve.
LINESTYLES: dict[str, str] = {"before": "--", "after": "-", "untrained": ":"}
#: Style of the unrelated-passage reference level.
REFERENCE_STYLE = {"color": "#7f7f7f", "linestyle": "-.", "linewidth": 1.1, "zorder": 1}


@dataclass(frozen=True)
class TransferLine:
    """One drawn curve: ``y`` against knob values ``x`` (empty ``x``: a level at ``y[0]``)."""

    label: str
    variant: str
    kind: str  # "before", "after" or "untrained" (a realmodel row, nothing fitted)
    x: tuple[float, ...]
    y: tuple[float, ...]

    @property
    def linestyle(self) -> str:
        return LINESTYLES[self.kind]


def _stage_lines(pairs: pd.DataFrame) -> list[TransferLine]:
    """A before and an after line per transferable variant (and length, settings)."""
    several_n = pairs["kv_len"].nunique() > 1
    lines = []
    for (variant, n, settings), group in pairs.groupby(["variant", "kv_len", "settings"]):
        group = group.sort_values("knob_value")
        extra = [f"n={fmt(n)}"] if several_n else []
        if pairs.loc[pairs["variant"] == variant, "settings"].nunique() > 1:
            extra.append(settings)
        knobs = group["knob"].dropna()
        name = f"{variant} ({knobs.iloc[0]})" if len(knobs) else f"{variant} (no knob)"
        name += f" [{'; '.join(extra)}]" if extra else ""
        for stage in STAGES:
            y = group[f"embed_cosine_{stage}"]
            keep = y.notna()
            if not keep.any():
                continue
            x = group.loc[keep, "knob_value"]
            xs = () if x.isna().all() else tuple(float(v) for v in x)
            lines.append(
                TransferLine(
                    f"{name} {stage} transfer",
                    str(variant),
                    stage,
                    xs,
                    tuple(float(v) for v in y[keep]) if xs else (float(y[keep].median()),),
                )
            )
    return lines


def _cosine_at(row: pd.Series, n: float | None) -> float:
    """A realmodel row's cosine at length ``n`` (``embed_cosine_by_length``), else its mean."""
    by_length = parse_json(row.get("embed_cosine_by_length"))
    if n is not None and isinstance(by_length, dict) and str(int(n)) in by_length:
        return float(by_length[str(int(n))])
    return float(row["embed_cosine"])


def untrained_rows(df: pd.DataFrame, transferred: set[str]) -> pd.DataFrame:
    """Realmodel rows of approximations with nothing fitted and not among ``transferred``."""
    if "embed_cosine" not in df.columns:
        return df.iloc[:0]
    rows = df[task_rows(df, "realmodel") & (df["status"] == "ok")]
    rows = rows[~rows["exact"].astype(bool) & ~rows["variant"].isin(transferred)]
    if "trained" in rows.columns:  # null for variants without trainable parameters
        rows = rows[rows["trained"].isna() | rows["trained"].map(is_false)]
    rows = rows.assign(knob_value=pd.to_numeric(rows["knob_value"], errors="coerce"))
    return rows[rows["knob_value"].notna() & rows["embed_cosine"].notna()]


def _untrained_lines(
    df: pd.DataFrame, transferred: set[str], n: float | None
) -> list[TransferLine]:
    """A dotted line per untrained realmodel series (knob values as x)."""
    rows = untrained_rows(df, transferred)
    if not len(rows):
        return []
    ignore = {v: [k] for v, k in zip(rows["variant"], rows["knob"])}
    rows = rows.assign(
        label=series_labels(rows, ignore), cosine=[_cosine_at(r, n) for _, r in rows.iterrows()]
    )
    lines = []
    for (label, variant, knob), group in rows.groupby(["label", "variant", "knob"], sort=True):
        curve = group.groupby("knob_value")["cosine"].median().sort_index()
        lines.append(
            TransferLine(
                f"{label} ({knob}), untrained",
                str(variant),
                "untrained",
                tuple(float(v) for v in curve.index),
                tuple(float(v) for v in curve),
            )
        )
    return lines


def transfer_lines(df: pd.DataFrame) -> tuple[list[TransferLine], str]:
    """Every curve of the figure for one device's prepared rows, and a note on the dotted ones."""
    pairs = transfer_pairs(df)
    lines = _stage_lines(pairs) if len(pairs) else []
    lengths = sorted({float(n) for n in pairs["kv_len"].dropna()})
    n = lengths[0] if len(lengths) == 1 else None
    untrained = _untrained_lines(df, set(pairs["variant"]), n)
    note = ""
    if untrained:
        at = f"their cosine at n={fmt(n)} where measured" if n else "their mean cosine"
        note = f"dotted: real-model experiment, nothing fitted, its own texts ({at})"
    return lines + untrained, note


def unrelated_level(pairs: pd.DataFrame) -> float | None:
    """The median over pairs of exact MiniLM's cosine between different held-out passages
    (either stage's row; both measure the exact model on the same texts), or None."""
    values = [
        pairs[f"embed_cosine_unrelated_{stage}"]
        for stage in STAGES
        if f"embed_cosine_unrelated_{stage}" in pairs
    ]
    found = pd.concat(values).dropna() if values else pd.Series(dtype=float)
    return float(found.median()) if len(found) else None


def plot_transfer_cosine(df: pd.DataFrame, path: str | Path, device: str) -> Figure:
    """Embedding cosine against knob value: before (dashed) and after (solid) transfer."""
    lines, note = transfer_lines(df)
    if not any(line.kind != "untrained" for line in lines):
        raise SkipFigure("no transfer rows with an embedding cosine (status ok)")
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for line in lines:
        style = {
            "color": color_for(line.variant),
            "linestyle": line.linestyle,
            "label": line.label,
        }
        if line.x:
            marker = "s" if line.kind == "untrained" else "o"
            ax.plot(line.x, line.y, marker=marker, markersize=5, **style)
        else:  # no knob: the variant's one value as a level across the figure
            ax.axhline(line.y[0], linewidth=1.5, **style)
    level = unrelated_level(transfer_pairs(df))
    if level is not None:
        label = f"exact model, unrelated held-out passages: {fmt(level)}"
        ax.axhline(level, gid="baseline_unrelated", label=label, **REFERENCE_STYLE)
    xs = [x for line in lines for x in line.x if x > 0]
    if xs and max(xs) / min(xs) >= 8:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("knob value (the knob is named in the legend)")
    ax.set_ylabel("cosine of sentence embedding to exact model")
    ax.grid(True, alpha=0.25)
    rows = df[is_transfer(df)]
    extra = "before transfer dashed, after solid"
    title(ax, "Attention transfer: embedding fidelity vs knob", rows, device, f"{extra}; {note}")
    return finish(fig, ax, path)


def plot_transfer(
    df: pd.DataFrame, out_dir: str | Path, only: tuple[str, ...] | list[str] | None = None
) -> list[FigureResult]:
    """The transfer figure per device with transfer rows; what was drawn and skipped.

    File names are ``transfer_cosine.png`` with one such device,
    ``transfer_cosine__<device slug>.png`` with several. No transfer rows, or ``only`` without
    ``transfer_cosine``: an empty list.
    """
    if only is not None and FIGURE not in only:
        return []
    df = prepare(df)
    devices = sorted(df.loc[is_transfer(df), "device_key"].dropna().unique())
    results = []
    for device in devices:
        name = f"{FIGURE}__{slug(device)}" if len(devices) > 1 else FIGURE
        path = Path(out_dir) / f"{name}.png"
        mine = df[df["device_key"] == device]
        results.append(
            draw_one(FIGURE, device, path, partial(plot_transfer_cosine, mine, path, device))
        )
    return results
