"""The train task's measurement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.measure.factory import Factory


def measure(point: Any, factory: Factory, out_dir: Path) -> list[dict[str, Any]]:
    """The rows of one training point."""
    from harness.train.experiment import measure_train_point

    return measure_train_point(point.as_dict(), factory)
