"""The realmodel task's measurement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.measure.factory import Factory


def measure(point: Any, factory: Factory, out_dir: Path) -> list[dict[str, Any]]:
    """The rows of one real-model point."""
    from harness.realmodel.experiment import measure_realmodel_point

    return measure_realmodel_point(point.as_dict(), factory, out_dir=out_dir)
