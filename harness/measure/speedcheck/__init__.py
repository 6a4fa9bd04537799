"""The speed check (``attnbench-speedcheck``): efficient variants against exact ``sdpa``.

:mod:`.targets` reads which variants to time and the speed-ups they must reach
(``conf/speedcheck.yaml``); :mod:`.table` times them in every pass; :mod:`.report` renders the
markdown; :mod:`.memory_scaling` measures peak memory against length; :mod:`.cli` is the
command. How the ratios are taken and what moves them: docs/performance.md.
"""

from harness.measure.speedcheck.cli import main
from harness.measure.speedcheck.report import render_markdown
from harness.measure.speedcheck.table import Cell, Table, build, measure_table, median_timer
from harness.measure.speedcheck.targets import (
    PASSES,
    SpeedVariant,
    Targets,
    TargetsError,
    default_path,
    load_targets,
)

__all__ = [
    "PASSES",
    "Cell",
    "SpeedVariant",
    "Table",
    "Targets",
    "TargetsError",
    "build",
    "default_path",
    "load_targets",
    "main",
    "measure_table",
    "median_timer",
    "render_markdown",
]
