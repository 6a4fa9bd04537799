"""Timing repeatability: the same point measured twice in one run agrees within 5% (> 10 ms).

Skipped in the default run (``--benchmark-skip`` in pyproject); run it with
``pytest tests/benchmarks/test_repeatability.py --benchmark-only`` on a quiet machine.
"""

from __future__ import annotations

import torch

import variants
from harness.measure import timing
from harness.measure.inputs import make_inputs


def test_same_point_twice_within_5_percent(benchmark):
    q, k, v = make_inputs("gaussian", 1, 8, 1024, 1024, 64, torch.float32, "cpu", 0)
    fn = timing.pass_callable("fwd", variants.create("sdpa"), q, k, v, False, q)

    def twice() -> tuple[float, float]:
        first = timing.time_callable(fn, "cpu", min_run_time=1.0)["time_ms"]
        second = timing.time_callable(fn, "cpu", min_run_time=1.0)["time_ms"]
        return first, second

    first, second = benchmark.pedantic(twice, rounds=1, iterations=1)
    benchmark.extra_info.update(first_ms=first, second_ms=second)
    assert min(first, second) > 10, "the point must take over 10 ms to be in scope"
    assert abs(first - second) / min(first, second) < 0.05, (first, second)
