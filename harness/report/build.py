"""``attnbench-report``: sweep folders (from any machines) -> report.md + PNG figures.

Rows are read with :func:`harness.analysis.rows.read_rows`: every ``rows.jsonl`` below the
folders (a corrupt line is named in a warning and skipped), or a ``results.csv`` given as a file
or found at the top of a folder that holds no ``rows.jsonl``. The report opens with each
device's environment; then comes the section of every registered task that has rows
(:mod:`harness.tasks`, in registry order: each task draws its own tables and figures); last,
the points that did not run (oom, over_budget, unsupported, error, nan) with their reasons.

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
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness import tasks
from harness.analysis.rows import read_rows
from harness.analysis.series import prepare
from harness.report.markdown import environment_markdown, failures_markdown
from harness.report.sections import task_rows
from harness.tasks import ReportContext

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


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`prepare` per task, so that one task's parameters never split the series names of
    another task's figures."""
    parts = [prepare(df[task_rows(df, name)]) for name in tasks.names()]
    parts = [p for p in parts if len(p)]
    other = ~pd.concat([task_rows(df, name) for name in tasks.names()], axis=1).any(axis=1)
    if other.any():  # rows of a task that is not installed here
        parts.append(prepare(df[other]))
    return pd.concat(parts).sort_index() if len(parts) > 1 else parts[0]


def _common_sections(df: pd.DataFrame, devices: list[str]) -> tuple[list[str], list[str]]:
    """The environment of each device (report top) and its points that did not run (end)."""
    env, failed = ["## Environment", ""], ["## Points that did not run", ""]
    for device in devices:
        rows = df[df["device_key"] == device]
        head = [f"### {device}", ""] if len(devices) > 1 else []
        env += head + [environment_markdown(rows), ""]
        failed += head + [failures_markdown(rows), ""]
    return env, failed


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
        reference_kv_len: Length at which the attention table reads error and rate (default per
            context: :func:`harness.analysis.scaling.default_reference_kv_len`).
        figures: Names of figures to draw (default all).

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
    devices = sorted(df["device_key"].unique())
    md = ["# attnbench report", ""]
    md += [
        f"Rows from {', '.join(f'`{f}`' for f in folders)}: {len(df)} rows, "
        f"{df['series'].nunique()} series, {len(devices)} device(s).",
        "",
    ]
    env, failed = _common_sections(df, devices)
    md += env
    options = {"heatmap": heatmap, "reference_kv_len": reference_kv_len}
    for name, task in tasks.tasks().items():
        section = task.report_fn()
        rows = df[task_rows(df, name)]
        if section is None or not len(rows):
            continue
        ctx = ReportContext(rows, df, out, devices, [Path(f) for f in folders], figures, options)
        md += section(ctx)
    md += failed
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
