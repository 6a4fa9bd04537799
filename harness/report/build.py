"""``attnbench-report``: sweep folders (from any machines) -> report.md + PNG figures.

Rows are read with :func:`harness.analysis.rows.read_rows` (every ``rows.jsonl`` below the folders; a
corrupt file is named in a warning and skipped). A ``results.csv`` (the aggregated output of a
sweep) is accepted too: given as a file, or found at the top of a folder that holds no
``rows.jsonl``. The report has the environment, the summary table of
:func:`harness.analysis.scaling.summary_table`, the figures of :func:`harness.report.figures.plot_all`, and the
counts of oom/unsupported/error/nan points with their reasons; one section per device when the
rows come from several devices or hosts.

Default output folder: ``<first folder>/report/``, so that regenerated files never mix with the
rows they were made from (the sweep passes its own folder explicitly).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harness.analysis import scaling
from harness.analysis.rows import COLUMNS, iter_row_files, read_rows
from harness.report import figures as plots

log = logging.getLogger(__name__)

#: Columns without which no figure or table can be made.
REQUIRED: tuple[str, ...] = ("variant", "status", "pass", "kv_len")
FAILURES: tuple[str, ...] = ("oom", "unsupported", "error", "nan", "skipped")


class ReportError(Exception):
    """No report can be made (no rows, missing columns); the message says why."""


def load_rows(folders: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Rows of every folder/file: ``rows.jsonl`` files, or ``results.csv`` where those are absent.

    Raises:
        ReportError: Nothing was found, or the rows lack a required column.
    """
    frames = []
    jsonl_inputs: list[Path] = []
    for folder in folders:
        p = Path(folder)
        if p.is_file() and p.suffix == ".csv":
            frames.append(pd.read_csv(p))
        elif p.is_dir() and not iter_row_files([p]) and (p / "results.csv").is_file():
            frames.append(pd.read_csv(p / "results.csv"))
        else:
            jsonl_inputs.append(p)
    if jsonl_inputs:
        frames.append(read_rows(jsonl_inputs))
    frames = [f for f in frames if len(f)]
    where = ", ".join(str(f) for f in folders)
    if not frames:
        raise ReportError(f"no results yet in {where} (no rows.jsonl or results.csv with rows)")
    df = pd.concat(frames, ignore_index=True)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    missing = [c for c in REQUIRED if df[c].isna().all()]
    if df["kv_len"].isna().all() and not df["q_len"].isna().all():
        missing.remove("kv_len")
    if missing:
        raise ReportError(f"rows in {where} lack the columns {', '.join(missing)}")
    key = [c for c in ("point_id", "pass", "host", "device") if df[c].notna().any()]
    if key and df["point_id"].notna().all():
        df = df.drop_duplicates(subset=key, keep="last")
    return df.reset_index(drop=True)


# --------------------------------------------------------------------------- formatting
def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer() and abs(value) >= 1:
            return str(int(value))
        return f"{value:.{digits}g}"
    return str(value)


def _slope(row: pd.Series, prefix: str) -> str:
    slope = row[f"{prefix}_slope"]
    if not np.isfinite(slope):
        return "–"
    lo, hi = row[f"{prefix}_ci_low"], row[f"{prefix}_ci_high"]
    ci = f" [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else ""
    return f"{slope:.2f}{ci}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table (no tabulate dependency); pipes in cells are escaped."""
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines)


def summary_markdown(table: pd.DataFrame) -> str:
    """The summary table of :func:`harness.analysis.scaling.summary_table` as markdown."""
    header = [
        "series",
        "time slope [95% CI]",
        "memory slope [95% CI]",
        "faster than full from n",
        "faster than sdpa from n",
        "smaller than full from n",
        "smaller than sdpa from n",
        "largest n before oom",
        "rel_err at n_ref",
        "TFLOP/s",
        "of matmul rate",
    ]
    varying = [
        c for c in ("dtype", "causal", "batch", "heads", "head_dim") if table[c].nunique() > 1
    ]
    header = header[:1] + varying + header[1:]
    out = []
    for _, r in table.iterrows():
        if np.isfinite(r["first_oom_seq_len"]):
            oom = _fmt(r["max_ok_seq_len"])
        else:  # never ran out of memory: the largest length tried is a lower bound
            oom = (
                f"≥ {_fmt(r['max_ok_seq_len'])} (no oom)"
                if np.isfinite(r["max_ok_seq_len"])
                else "–"
            )
        rate = f"{100 * r['rate_frac']:.1f}%" if np.isfinite(r["rate_frac"]) else "–"
        out.append(
            [r["series"]]
            + [_fmt(r[c]) for c in varying]
            + [_slope(r, "time"), _slope(r, "mem")]
            + [
                _fmt(r[c], 4)
                for c in ("time_cross_full", "time_cross_sdpa", "mem_cross_full", "mem_cross_sdpa")
            ]
            + [oom, _fmt(r["rel_err"]), _fmt(r["tflops"]), rate]
        )
    return markdown_table(header, out)


def environment_markdown(df: pd.DataFrame) -> str:
    """One table of the environment columns: each distinct value (several -> listed)."""
    cols = [
        "device",
        "device_name",
        "cpu_model",
        "host",
        "threads",
        "torch",
        "cuda",
        "xformers",
        "git_commit",
        "dtype",
        "run_id",
        "experiment",
    ]
    rows = []
    for col in cols:
        values = sorted({str(v) for v in df[col].dropna()})
        if values:
            rows.append([col, ", ".join(values[:6]) + (" …" if len(values) > 6 else "")])
    times = pd.to_datetime(df["time"], errors="coerce", utc=True).dropna()
    if len(times):
        rows.append(
            ["measured", f"{times.min():%Y-%m-%d %H:%M} – {times.max():%Y-%m-%d %H:%M} UTC"]
        )
    return markdown_table(["", "value"], rows)


def failures_markdown(df: pd.DataFrame) -> str:
    """Counts of points per status and the reasons of those that did not run."""
    points = df.drop_duplicates(
        subset=["series", "seq_len", "pass", "status", "reason", "point_id"]
    )
    counts = points["status"].value_counts()
    lines = ["Rows per status: " + ", ".join(f"{s} {n}" for s, n in counts.items()) + "."]
    bad = points[points["status"].isin(FAILURES)]
    if not len(bad):
        return lines[0] + " Every point ran."
    grouped = bad.groupby(["status", "variant", "reason"], dropna=False).size()
    rows = [
        [s, v, str(r) if isinstance(r, str) else "(no reason recorded)", str(n)]
        for (s, v, r), n in grouped.items()
    ]
    return lines[0] + "\n\n" + markdown_table(["status", "variant", "reason", "rows"], rows)


# ------------------------------------------------------------------------------ report
CONTEXT_COLUMNS = ["dtype", "causal", "batch", "heads", "head_dim"]


def realmodel_markdown(df: pd.DataFrame) -> str:
    """Table of the real-model points (task ``realmodel``), one row per variant and knob value.

    Embedding cosine to the exact model (mean and worst text), the retrieval check (fraction of
    queries whose true pydoc pair ranks first, with exact attention and with the variant; mean
    rank; fraction whose best candidate agrees with exact) and the model's forward time against
    the exact model's. Empty string when there are no such rows.
    """
    if "task" not in df.columns or "embed_cosine" not in df.columns:
        return ""
    rows = df[(df["task"] == "realmodel") & (df["status"] == "ok")]
    if rows.empty:
        return ""
    cols = ["embed_cosine", "embed_cosine_min", "retrieval_exact_top1", "retrieval_top1",
            "retrieval_mean_rank", "retrieval_agree_top1", "time_ms", "exact_time_ms"]  # fmt: skip
    rows = rows.reindex(columns=["variant", "knob", "knob_value", *cols])
    for col in cols + ["knob_value"]:
        rows[col] = pd.to_numeric(rows[col], errors="coerce")
    grouped = rows.groupby(["variant", "knob", "knob_value"], dropna=False)[cols].median()
    out = []
    for (variant, knob, value), r in grouped.iterrows():
        out.append(
            [
                str(variant),
                "–" if pd.isna(knob) else f"{knob}={_fmt(value)}",
                _fmt(r["embed_cosine"], 5),
                _fmt(r["embed_cosine_min"], 5),
                f"{_fmt(r['retrieval_top1'])} (exact {_fmt(r['retrieval_exact_top1'])})",
                _fmt(r["retrieval_mean_rank"]),
                _fmt(r["retrieval_agree_top1"]),
                f"{_fmt(r['time_ms'])} / {_fmt(r['exact_time_ms'])}",
            ]
        )
    header = ["variant", "knob", "embedding cosine (mean)", "cosine (worst text)",
              "retrieval top-1", "mean rank of true pair", "top-1 agrees with exact",
              "model time ms / exact ms"]  # fmt: skip
    return markdown_table(header, out)


def build_report(
    folders: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    heatmap: bool = True,
    sentence: str = "The cat sat on the mat.",
    heatmap_layer: int = 0,
    heatmap_head: int = 0,
    reference_seq_len: float | None = None,
    figures: Sequence[str] | None = None,
) -> Path:
    """Write ``report.md`` and its PNG figures; returns the path of report.md.

    Args:
        folders: Sweep folders (searched recursively for rows.jsonl), results.csv files, or
            rows.jsonl files.
        out_dir: Output folder; default ``<first folder>/report`` (see the module docstring).
        heatmap: Draw the MiniLM attention heatmaps (skipped with a reason when the real-model
            extra is not installed).
        sentence: Sentence of the heatmaps.
        heatmap_layer: MiniLM layer (0..5) of the heatmaps.
        heatmap_head: MiniLM head (0..11) of the heatmaps.
        reference_seq_len: Length at which the table reads error and rate (default per context:
            :func:`harness.analysis.scaling.default_reference_seq_len`).
        figures: Names of :data:`harness.report.figures.FIGURES` to draw (default all).

    Raises:
        ReportError: No rows, or required columns missing.
    """
    folders = list(folders)
    if not folders:
        raise ReportError("no folders given")
    df = scaling.prepare(load_rows(folders))
    first = Path(folders[0])
    out = (
        Path(out_dir)
        if out_dir is not None
        else (first.parent if first.is_file() else first) / "report"
    )
    out.mkdir(parents=True, exist_ok=True)

    drawn = plots.plot_all(df, out, only=figures)
    table = scaling.summary_table(plots.attention_rows(df), reference_seq_len)
    devices = sorted(df["device_key"].unique())
    md = ["# attnbench report", ""]
    md.append(
        f"Rows from {', '.join(f'`{f}`' for f in folders)}: {len(df)} rows, "
        f"{df['series'].nunique()} series, {len(devices)} device(s)."
    )
    md.append("")
    md.append(
        "Slopes are log-log least-squares fits of the median per length with 95% "
        "confidence intervals (t distribution); a slope of 1 is linear, 2 quadratic. "
        "Crossovers are interpolated in log space (an oom counts as slower); – means "
        "never, or not measured. The reference length n_ref is the largest at which the "
        "most series ran."
    )
    for device in devices:
        rows = df[df["device_key"] == device]
        md += ["", f"## {device}" if len(devices) > 1 else "## Results", ""]
        md += ["### Environment", "", environment_markdown(rows), ""]
        sub = table[table["device_key"] == device] if len(table) else table
        if not len(sub):
            md += ["No attention points here (only real-model rows): no scaling summary.", ""]
        contexts = sub.groupby(CONTEXT_COLUMNS) if len(sub) else []
        for ctx, ctx_table in contexts:
            dtype, causal, batch, heads, head_dim = ctx
            ref = ctx_table["reference_seq_len"].iloc[0]
            md += [
                f"### Summary: {dtype}, {'causal' if causal else 'non-causal'}, batch "
                f"{batch}, {heads} heads, head_dim {head_dim}; n_ref = {_fmt(ref)}",
                "",
            ]
            md += [summary_markdown(ctx_table), ""]
        real = realmodel_markdown(rows)
        if real:
            md += [
                "### Real-model fidelity (all-MiniLM-L6-v2)",
                "",
                "Each variant swapped into every attention layer of the pretrained model, on "
                "the same pydoc texts. Retrieval: each paragraph's first half is a query, all "
                "second halves are candidates; top-1 is the fraction whose true half ranks "
                "first.",
                "",
                real,
                "",
            ]
        md += ["### Points that did not run", "", failures_markdown(rows), ""]
        md += ["### Figures", ""]
        skipped = []
        for fig in drawn:
            if fig.device != device:
                continue
            if fig.path is not None:
                rel = os.path.relpath(fig.path, out)
                md += [f"![{fig.name}]({rel})", ""]
            else:
                skipped.append(f"- {fig.name}: {fig.skipped}")
        if skipped:
            md += ["Figures not drawn:", ""] + skipped + [""]
    md += ["## Attention heatmaps (MiniLM)", ""]
    if heatmap:
        try:
            fig = plots.heatmap_figure(
                out / "heatmaps.png",
                sorted(df["variant"].unique()),
                sentence,
                heatmap_layer,
                heatmap_head,
            )
            plots.plt.close(fig)
            md += ["![heatmaps](heatmaps.png)", ""]
        except plots.SkipFigure as exc:
            log.warning("heatmaps skipped: %s", exc)
            md += [f"Not drawn: {exc}", ""]
    else:
        md += ["Not drawn (--no-heatmap).", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


def cli(argv: Sequence[str] | None = None) -> int:
    """``attnbench-report DIR... [--out DIR] [--heatmap-layer N --heatmap-head N
    --sentence TEXT] [--no-heatmap]``; returns the exit code (1 with a message on no rows)."""
    parser = argparse.ArgumentParser(
        prog="attnbench-report",
        description="Aggregate sweep folders (rows.jsonl / results.csv) into report.md + plots.",
    )
    parser.add_argument("folders", nargs="+", metavar="DIR", help="sweep folders or files")
    parser.add_argument("--out", default=None, help="output folder (default DIR/report)")
    parser.add_argument("--heatmap-layer", type=int, default=0, help="MiniLM layer, 0..5")
    parser.add_argument("--heatmap-head", type=int, default=0, help="MiniLM head, 0..11")
    parser.add_argument("--sentence", default="The cat sat on the mat.", help="heatmap text")
    parser.add_argument("--no-heatmap", action="store_true", help="skip the MiniLM heatmaps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="attnbench-report: %(message)s")
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # corrupt-file warnings reach the user once each
        try:
            path = build_report(
                args.folders,
                args.out,
                heatmap=not args.no_heatmap,
                sentence=args.sentence,
                heatmap_layer=args.heatmap_layer,
                heatmap_head=args.heatmap_head,
            )
        except ReportError as exc:
            print(f"attnbench-report: {exc}", file=sys.stderr)
            return 1
    print(f"attnbench-report: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
