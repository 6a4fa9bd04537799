"""``attnbench-report``: sweep folders (from any machines) -> report.md + PNG figures.

Rows are read with :func:`harness.analysis.rows.read_rows`: every ``rows.jsonl`` below the
folders (a corrupt line is named in a warning and skipped), or a ``results.csv`` given as a file
or found at the top of a folder that holds no ``rows.jsonl``. The report opens with the inputs the
accuracy numbers were measured on (and, for an input fitted to a real model, the statistics
beside the model's); then per device the environment, the summary table of
:func:`harness.analysis.scaling.summary_table`, the divergences of the effective attention
matrix, the real-model table, the counts of points that did not run (oom, over_budget,
unsupported, error, nan) with their reasons, and the figures of
:func:`harness.report.figures.plot_all` (one section per device when the rows come from several
devices or hosts); then, where there are training rows (``task == "train"``), the "Quality
after training" section of :mod:`harness.report.markdown_train` with the figures of
:func:`harness.report.figures_train.plot_train`; where there are transfer rows
(``task == "transfer"``), the "Before / after transfer" section of
:mod:`harness.report.markdown_transfer` with the figure of
:func:`harness.report.figures_transfer.plot_transfer`; last the attention heatmaps of every
``heatmap.json`` below the folders.

The report reads files only: it imports no variant and runs no model, so a machine without the
plugins or the real-model extra draws the same report from the same rows.

Default output folder: ``<first folder>/report/``, so that regenerated files never mix with the
rows they were made from (the sweep passes its own folder explicitly).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from harness.analysis import scaling
from harness.analysis.rows import read_rows
from harness.analysis.series import prepare
from harness.report.figures import FigureResult, attention_rows, plot_all
from harness.report.figures_realmodel import draw_heatmaps
from harness.report.figures_train import plot_train
from harness.report.figures_transfer import plot_transfer
from harness.report.markdown import (
    divergence_markdown,
    environment_markdown,
    failures_markdown,
    fitted_inputs_markdown,
    fmt,
    realmodel_markdown,
    summary_markdown,
)
from harness.report.markdown_train import train_markdown
from harness.report.markdown_transfer import transfer_markdown
from harness.report.style import CONTEXT_COLUMNS, SkipFigure, inputs_label
from harness.report.train_data import is_train

log = logging.getLogger(__name__)

#: Columns without which no figure or table can be made.
REQUIRED: tuple[str, ...] = ("variant", "status", "pass", "kv_len")


class ReportError(Exception):
    """No report can be made (no rows, missing columns); the message says why."""


def load_rows(folders: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Rows of every folder/file (see :func:`harness.analysis.rows.read_rows`).

    Raises:
        ReportError: Nothing was found, or the rows lack a required column.
    """
    df = read_rows(folders)
    where = ", ".join(str(f) for f in folders)
    if not len(df):
        raise ReportError(f"no results yet in {where} (no rows.jsonl or results.csv with rows)")
    missing = [c for c in REQUIRED if df[c].isna().all()]
    if df["kv_len"].isna().all() and not df["q_len"].isna().all():
        missing.remove("kv_len")
    if missing:
        raise ReportError(f"rows in {where} lack the columns {', '.join(missing)}")
    return df


INTRO = (
    "Slopes describe the asymptote: the exponent p of a + b·nᵖ fitted to the median per "
    "length over every length measured (the constant a takes the fixed cost per call, which "
    "flattens short lengths), with its 95% profile-likelihood interval; a slope of 1 is "
    "linear, 2 quadratic. Where the residuals of that fit still curve, the series is marked "
    "'curved' and the slope is the log-log least-squares slope of the top four lengths (the "
    "range is named). With fewer than five lengths there is no interval. Crossovers are "
    "interpolated in log space (a point that did not fit in memory counts as slower); "
    "≤ n means smaller already at the first length both ran; – means never, or not measured. "
    "The reference length n_ref is the largest at which the most series ran. Errors compare "
    "with two baselines on the same inputs: outputting zeros (error 1) and uniform attention "
    "(the mean of V)."
)
REALMODEL_INTRO = (
    "Each variant swapped into every attention layer of the pretrained model, on the same pydoc "
    "texts. Retrieval: each paragraph's first half is a query, all second halves are "
    "candidates; top-1 is the fraction whose true half ranks first."
)


def inputs_of_errors(rows: pd.DataFrame) -> str:
    """The inputs the errors of ``rows`` were measured on, labelled (several joined by '; ')."""
    err = rows[(rows["pass"] == "fwd") & (rows["status"] == "ok") & rows["rel_err"].notna()]
    pairs = err[["inputs", "inputs_params"]].astype(str).drop_duplicates().index
    labels = {inputs_label(err.loc[i, "inputs"], err.loc[i, "inputs_params"]) for i in pairs}
    return "; ".join(sorted(labels))


def _summary_sections(table: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
    """One summary table per context (dtype, causal, shape) of one device."""
    if not len(table):
        return ["No attention points here (only real-model rows): no scaling summary.", ""]
    md = []
    for ctx, ctx_table in table.groupby(list(CONTEXT_COLUMNS)):
        dtype, causal, batch, heads, head_dim = ctx
        ref = ctx_table["reference_kv_len"].iloc[0]
        md += [
            f"### Summary: {dtype}, {'causal' if causal else 'non-causal'}, batch "
            f"{batch}, {heads} heads, head_dim {head_dim}; n_ref = {fmt(ref)}",
            "",
            summary_markdown(ctx_table),
            "",
        ]
        name, params = ctx_table[["error_inputs", "error_inputs_params"]].iloc[0]
        if isinstance(name, str):
            md += [f"rel_err at n_ref on inputs {inputs_label(name, params)}.", ""]
    divergence = divergence_markdown(attention_rows(rows))
    if divergence:
        md += ["### Divergence of the effective attention matrix", "", divergence, ""]
    return md


def _figure_lines(drawn: list[FigureResult], device: str, out: Path) -> list[str]:
    """The device's figures embedded, then those not drawn with the reason."""
    md, skipped = [], []
    for fig in drawn:
        if fig.device != device:
            continue
        if fig.path is not None:
            md += [f"![{fig.name}]({os.path.relpath(fig.path, out)})", ""]
        else:
            skipped.append(f"- {fig.name}: {fig.skipped}")
    if skipped:
        md += ["Figures not drawn:", ""] + skipped + [""]
    return md


def _device_section(
    rows: pd.DataFrame, table: pd.DataFrame, drawn: list[FigureResult], device: str, out: Path
) -> list[str]:
    """Environment, summary, real-model table, failures and figures of one device (training
    rows are the "Quality after training" section's)."""
    md = ["### Environment", "", environment_markdown(rows), ""]
    rows = rows[~is_train(rows)]
    if not len(rows):
        return md + ["Only training rows from this device: see Quality after training.", ""]
    md += _summary_sections(table[table["device_key"] == device] if len(table) else table, rows)
    real = realmodel_markdown(rows)
    if real:
        md += ["### Real-model fidelity (all-MiniLM-L6-v2)", "", REALMODEL_INTRO, "", real, ""]
    md += ["### Points that did not run", "", failures_markdown(rows), ""]
    return md + ["### Figures", ""] + _figure_lines(drawn, device, out)


def _task_section(
    heading: tuple[str, str],
    make: Callable[[pd.DataFrame], list[str]],
    df: pd.DataFrame,
    drawn: list[FigureResult],
    devices: list[str],
    out: Path,
) -> list[str]:
    """A section (``heading``: its title and its figures' title) per device whose rows ``make``
    has text for, each followed by the section's figures; nothing when none has."""
    md = []
    for device in devices:
        text = make(df[df["device_key"] == device])
        if not text:
            continue
        md += [f"### {device}", ""] if len(devices) > 1 else []
        md += text + [f"### {heading[1]}", ""] + _figure_lines(drawn, device, out)
    return [f"## {heading[0]}", ""] + md if md else []


def _train_text(rows: pd.DataFrame) -> list[str]:
    return train_markdown(rows, attention_rows(rows))


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`prepare` with training rows labelled apart, so that their parameters never
    split the series names of the attention figures (and the reverse)."""
    train = is_train(df)
    if not train.any() or train.all():
        return prepare(df)
    return pd.concat([prepare(df[~train]), prepare(df[train])]).sort_index()


def _heatmap_section(folders: Sequence[str | os.PathLike], out: Path, heatmap: bool) -> list[str]:
    """The heatmaps of every heatmap.json below ``folders``, or why there are none."""
    md = ["## Attention heatmaps (MiniLM)", ""]
    if not heatmap:
        return md + ["Not drawn (--no-heatmap).", ""]
    try:
        drawn = draw_heatmaps(folders, out)
    except SkipFigure as exc:
        log.info("heatmaps skipped: %s", exc)
        return md + [f"Not drawn: {exc}", ""]
    for path, group in drawn:
        md += [f"![heatmaps: {group.title}]({os.path.relpath(path, out)})", ""]
        left_out = [f"- {variant}: {reason}" for variant, reason in group.not_drawn().items()]
        if left_out:
            md += ["Left out of these heatmaps:", ""] + left_out + [""]
    return md


def build_report(
    folders: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    heatmap: bool = True,
    reference_kv_len: float | None = None,
    figures: Sequence[str] | None = None,
) -> Path:
    """Write ``report.md`` and its PNG figures; returns the path of report.md.

    Args:
        folders: Sweep folders (searched recursively for rows.jsonl), results.csv files, or
            rows.jsonl files.
        out_dir: Output folder; default ``<first folder>/report`` (see the module docstring).
        heatmap: Draw the attention heatmaps of the heatmap.json files below ``folders``.
        reference_kv_len: Length at which the table reads error and rate (default per context:
            :func:`harness.analysis.scaling.default_reference_kv_len`).
        figures: Names of :data:`harness.report.figures.FIGURES` to draw (default all).

    Raises:
        ReportError: No rows, or required columns missing.
    """
    folders = list(folders)
    if not folders:
        raise ReportError("no folders given")
    df = _prepare(load_rows(folders))
    first = Path(folders[0])
    out = (
        Path(out_dir)
        if out_dir is not None
        else (first.parent if first.is_file() else first) / "report"
    )
    out.mkdir(parents=True, exist_ok=True)

    drawn = plot_all(df, out, only=figures)
    drawn_train = plot_train(df, out, only=figures)
    drawn_transfer = plot_transfer(df, out, only=figures)
    table = scaling.summary_table(attention_rows(df), reference_kv_len)
    devices = sorted(df["device_key"].unique())
    md = ["# attnbench report", ""]
    md.append(
        f"Rows from {', '.join(f'`{f}`' for f in folders)}: {len(df)} rows, "
        f"{df['series'].nunique()} series, {len(devices)} device(s)."
    )
    inputs = inputs_of_errors(attention_rows(df))
    if inputs:
        md += ["", f"Accuracy measured on inputs: {inputs}."]
    fitted = fitted_inputs_markdown(attention_rows(df))
    if fitted:
        md += ["", fitted]
    md += ["", INTRO]
    for device in devices:
        md += ["", f"## {device}" if len(devices) > 1 else "## Results", ""]
        rows = df[df["device_key"] == device]
        md += _device_section(rows, table, drawn, device, out)
    train = ("Quality after training", "Training figures")
    md += _task_section(train, _train_text, df, drawn_train, devices, out)
    transfer = ("Before / after transfer", "Transfer figures")
    md += _task_section(transfer, transfer_markdown, df, drawn_transfer, devices, out)
    md += _heatmap_section(folders, out, heatmap)
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


def cli(argv: Sequence[str] | None = None) -> int:
    """``attnbench-report DIR... [--out DIR] [--no-heatmap]``; returns the exit code (1 with a
    message on no rows)."""
    parser = argparse.ArgumentParser(
        prog="attnbench-report",
        description="Aggregate sweep folders (rows.jsonl / results.csv) into report.md + plots.",
    )
    parser.add_argument("folders", nargs="+", metavar="DIR", help="sweep folders or files")
    parser.add_argument("--out", default=None, help="output folder (default DIR/report)")
    parser.add_argument(
        "--no-heatmap", action="store_true", help="skip the attention heatmaps (heatmap.json)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="attnbench-report: %(message)s")
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # corrupt-line warnings reach the user once each
        try:
            path = build_report(args.folders, args.out, heatmap=not args.no_heatmap)
        except ReportError as exc:
            print(f"attnbench-report: {exc}", file=sys.stderr)
            return 1
    print(f"attnbench-report: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
