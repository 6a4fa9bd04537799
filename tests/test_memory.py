"""Peak memory is measured: a known allocation inside the call is found within 10%."""

from __future__ import annotations

import pytest
import torch

from harness.measure import memory

pytestmark = pytest.mark.slow

SIZE = 200 * 1024 * 1024  # bytes


def _allocate_and_touch():
    t = torch.empty(SIZE // 4, dtype=torch.float32)
    t.fill_(1.0)  # touch every page: untouched pages are not resident
    return t


def _allocate_and_free():
    t = _allocate_and_touch()
    del t
    return None


@pytest.mark.parametrize("method", ["rss", "profiler"])
def test_known_allocation_within_10_percent(method):
    if method == "rss" and not memory.rss_available():
        pytest.skip("/proc/self/clear_refs not usable here")
    for fn in (_allocate_and_touch, _allocate_and_free):  # kept or freed before return
        got = memory.peak_memory(fn, "cpu", method=method)
        assert got["method"] == method
        assert abs(got["peak_mem_bytes"] - SIZE) <= 0.1 * SIZE, got


@pytest.mark.parametrize("method", ["rss", "profiler"])
def test_repeated_measurement_is_not_hidden_by_freed_memory(method):
    # glibc keeps freed memory for reuse; the harness trims it so the second call counts too.
    if method == "rss" and not memory.rss_available():
        pytest.skip("/proc/self/clear_refs not usable here")
    first = memory.peak_memory(_allocate_and_touch, "cpu", method)["peak_mem_bytes"]
    second = memory.peak_memory(_allocate_and_touch, "cpu", method)["peak_mem_bytes"]
    assert abs(second - first) <= 0.1 * SIZE


def test_default_cpu_method_is_exact_for_small_allocations():
    # The default (profiler) counts tensor bytes: a 3 MiB intermediate freed inside the call and
    # a 1 MiB result are found exactly, and again on the next call (RSS was not repeatable at
    # this size in a long-lived process, see harness/measure/memory.py).
    def call():
        scratch = torch.ones(3 * 2**18)  # 3 MiB
        return scratch[: 2**18].clone()  # 1 MiB, alive with scratch at the peak

    got = [memory.peak_memory(call, "cpu") for _ in range(3)]
    assert {g["method"] for g in got} == {"profiler"}
    assert [g["peak_mem_bytes"] for g in got] == [4 * 2**20] * 3


def test_no_allocation_reads_near_zero():
    got = memory.peak_memory(lambda: None, "cpu")
    assert got["peak_mem_bytes"] < 0.05 * SIZE


def test_unknown_method_names_choices():
    with pytest.raises(ValueError, match="method='guess' is not one of rss, profiler"):
        memory.peak_memory(lambda: None, "cpu", method="guess")


@pytest.mark.cuda
def test_cuda_known_allocation():
    got = memory.peak_memory(lambda: torch.ones(SIZE // 4, device="cuda"), "cuda")
    assert abs(got["peak_mem_bytes"] - SIZE) <= 0.1 * SIZE


def test_release_is_safe():
    memory.release("cpu")
    memory.release(None)
