"""Test selection shared by the whole suite.

The default run (``python -m pytest``, what CI and the README run) runs everything except the
pytest-benchmark suite. Tests in the files below are marked ``slow`` (end-to-end subprocess runs
of the Hydra app and launchers, the pretrained-model tests, figure rendering, the measurement
checks): about 4 of the suite's 5 minutes on an idle 2-core CPU. Skip them while iterating with
``python -m pytest -m "not slow"`` (about 20 s).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (deterministic, and fair on a shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
