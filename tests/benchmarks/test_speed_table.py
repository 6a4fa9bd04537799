"""The speed table of ``attnbench-speedcheck`` as a pytest-benchmark group (``speed_table``).

Skipped by the default test run (``--benchmark-skip`` in pyproject); run with::

    pytest tests/benchmarks/test_speed_table.py --benchmark-only

One benchmark per (pass, variant) of :mod:`harness.measure.speedcheck`'s table (the variants
and targets of ``conf/speedcheck.yaml``) and length of ``ATTNBENCH_BENCH_SEQ_LENS``, on the
benchmark device and dtype (conftest; e.g. ``ATTNBENCH_BENCH_SEQ_LENS=8192`` for the table's
length). Each benchmark times the variant's pass and ``sdpa``'s same pass (same masking) in
alternating rounds and records their times and the median per-round ratio in ``extra_info``;
the benchmark's own time is the variant's. No speed is asserted: ``attnbench-speedcheck`` prints
the table with its targets.
"""

from __future__ import annotations

import statistics
from typing import Any

import pytest
import torch

from harness.measure import speedcheck, timing

HEADS, HEAD_DIM = 8, 64
ROUNDS = 3
COLUMNS = speedcheck.load_targets().speed


@pytest.mark.parametrize("column", COLUMNS, ids=[str(c.label) for c in COLUMNS])
@pytest.mark.parametrize("pass_name, causal, row", speedcheck.PASSES)
def test_speed_table(
    benchmark: Any,
    column: speedcheck.SpeedVariant,
    pass_name: str,
    causal: bool,
    row: str,
    bench_device: str,
    bench_dtype: torch.dtype,
    bench_seq_len: int,
) -> None:
    n = bench_seq_len
    label, name, params = str(column.label), column.variant, dict(column.params)
    gen = torch.Generator().manual_seed(0)
    q, k, v, grad = (
        torch.randn(1, HEADS, n, HEAD_DIM, generator=gen).to(bench_device, bench_dtype)
        for _ in range(4)
    )
    calls = {}
    for key, (mod_name, mod_params) in {"sdpa": ("sdpa", {}), label: (name, params)}.items():
        try:
            module = speedcheck.build(mod_name, mod_params, n, HEAD_DIM).to(bench_device)
        except Exception as exc:  # e.g. linformer k=256 above a short kv_len
            pytest.skip(f"{mod_name}: {type(exc).__name__}: {exc}")
        reasons = module.not_supported_reasons(q, k, v, causal)
        if reasons:
            pytest.skip("; ".join(reasons))
        module.setup(q, k, v, causal)
        calls[key] = timing.pass_callable(pass_name, module, q, k, v, causal, grad)
        calls[key]()  # lazy state, allocator warm-up
    times: dict[str, list[float]] = {key: [] for key in calls}

    def rounds() -> None:
        for r in range(ROUNDS):
            for key in calls if r % 2 == 0 else list(calls)[::-1]:
                reading = timing.time_callable(calls[key], bench_device, 0.2, 1)
                times[key].append(reading["time_ms"])

    benchmark.group = f"speed_table n={n} {row}"
    benchmark.pedantic(rounds, rounds=1, iterations=1)
    ratios = [s / t for s, t in zip(times["sdpa"], times[label])]
    benchmark.extra_info.update(
        variant=label, pass_name=pass_name, causal=causal, seq_len=n,
        time_ms=statistics.median(times[label]), sdpa_ms=statistics.median(times["sdpa"]),
        speedup=statistics.median(ratios),
        target=column.target(pass_name, causal),
    )  # fmt: skip
