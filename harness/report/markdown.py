"""The report's markdown: tables of the summary, the environment, failures and real-model points.

Plain GitHub markdown without a tabulate dependency; every function takes prepared rows or the
summary table of :func:`harness.analysis.scaling.summary_table` and returns text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

#: Columns of the environment table, in order.
ENVIRONMENT_COLUMNS = (
    "device", "device_name", "cpu_model", "host", "threads", "torch", "cuda", "xformers",
    "git_commit", "dtype", "run_id", "experiment",
)  # fmt: skip
#: Statuses of points that did not run.
FAILURES: tuple[str, ...] = ("oom", "unsupported", "error", "nan", "skipped")


def fmt(value: object, digits: int = 3) -> str:
    """A cell: integers plainly, other numbers to ``digits`` significant digits, – for none."""
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
        if np.isfinite(r["first_oom_kv_len"]):
            oom = fmt(r["max_ok_kv_len"])
        else:  # never ran out of memory: the largest length tried is a lower bound
            oom = (
                f"≥ {fmt(r['max_ok_kv_len'])} (no oom)" if np.isfinite(r["max_ok_kv_len"]) else "–"
            )
        rate = f"{100 * r['rate_frac']:.1f}%" if np.isfinite(r["rate_frac"]) else "–"
        out.append(
            [r["series"]]
            + [fmt(r[c]) for c in varying]
            + [_slope(r, "time"), _slope(r, "mem")]
            + [
                fmt(r[c], 4)
                for c in ("time_cross_full", "time_cross_sdpa", "mem_cross_full", "mem_cross_sdpa")
            ]
            + [oom, fmt(r["rel_err"]), fmt(r["tflops"]), rate]
        )
    return markdown_table(header, out)


def environment_markdown(df: pd.DataFrame) -> str:
    """One table of the environment columns: each distinct value (several -> listed)."""
    rows = []
    for col in ENVIRONMENT_COLUMNS:
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
        subset=["series", "kv_len", "pass", "status", "reason", "point_id"]
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
                "–" if pd.isna(knob) else f"{knob}={fmt(value)}",
                fmt(r["embed_cosine"], 5),
                fmt(r["embed_cosine_min"], 5),
                f"{fmt(r['retrieval_top1'])} (exact {fmt(r['retrieval_exact_top1'])})",
                fmt(r["retrieval_mean_rank"]),
                fmt(r["retrieval_agree_top1"]),
                f"{fmt(r['time_ms'])} / {fmt(r['exact_time_ms'])}",
            ]
        )
    header = ["variant", "knob", "embedding cosine (mean)", "cosine (worst text)",
              "retrieval top-1", "mean rank of true pair", "top-1 agrees with exact",
              "model time ms / exact ms"]  # fmt: skip
    return markdown_table(header, out)
