"""The transfer task's measurement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.measure.factory import Factory


def measure(point: Any, factory: Factory, out_dir: Path) -> list[dict[str, Any]]:
    """The rows of one transfer point."""
    from harness.realmodel.transfer import measure_transfer_point

    return measure_transfer_point(point.as_dict(), factory, out_dir=out_dir)
