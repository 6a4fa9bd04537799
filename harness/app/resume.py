"""Resume: a multirun skips the points whose rows its folder already holds.

The sweep folder's rows are read with :func:`harness.analysis.rows.point_ids`, the same tolerant
reader as the report's: a corrupt line is named and skipped and the file's valid rows count, so
the points resume skips are exactly the points the report shows.
"""

from __future__ import annotations

from pathlib import Path

from harness.analysis.rows import point_ids


def already_measured(sweep_dir: Path, point_id: str) -> bool:
    """Whether a row of ``point_id`` exists anywhere below ``sweep_dir``."""
    return point_id in point_ids([sweep_dir])


def skip_line(index: str, variant: str, point_id: str) -> str:
    """The progress line of a skipped point."""
    return (
        f"[{index}] {variant} point {point_id} already measured; skipped "
        "(force=true to measure again)"
    )
