"""Test selection shared by the whole suite.

The default run (``python -m pytest``, what CI and the README run) skips tests marked ``slow``:
end-to-end subprocess runs of the Hydra app and launchers, the pretrained-model tests, figure
rendering and the long measurement checks. On a 2-core CPU they take tens of minutes, past the
CI budget. Run them with ``python -m pytest -m slow`` (or everything with ``-m ""``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: Test files whose every test is slow (seconds to minutes each on a 2-core CPU).
SLOW_FILES = {
    "test_sweeps.py",
    "test_plugins.py",
    "test_realmodel.py",
    "test_plots.py",
    "test_report.py",
    "test_measure.py",
    "test_timing.py",
    "test_memory.py",
    "test_cosformer.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
