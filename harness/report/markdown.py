"""The report's shared markdown: cells, tables, the environment and failures.

Plain GitHub markdown without a tabulate dependency; the tables take prepared rows and return
text.
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
FAILURES: tuple[str, ...] = ("oom", "over_budget", "unsupported", "error", "nan", "skipped")


def fmt(value: object, digits: int = 3) -> str:
    """A cell: integers plainly, other numbers to ``digits`` significant digits, – for none."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer() and abs(value) >= 1:
            return str(int(value))
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table (no tabulate dependency); pipes in cells are escaped."""
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines)


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
