"""The attention task's measurement (moved here from harness.measure.point)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.measure.factory import Factory
from harness.measure.point import measure_point


def measure(point: Any, factory: Factory, out_dir: Path) -> list[dict[str, Any]]:
    """The rows of one attention point (one per pass)."""
    return measure_point(point.as_dict(), factory)
