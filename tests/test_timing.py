"""Timing: statistics shape, repeatability of one point, backward timed alone."""

from __future__ import annotations

import time

import pytest
import torch

import variants
from harness.measure import timing
from harness.measure.inputs import make_inputs

# One thread: OpenMP spin-waiting on a shared, loaded machine makes two threads erratic.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def test_time_callable_reports_median_iqr_repeats():
    a = torch.randn(64, 64)
    got = timing.time_callable(lambda: a @ a, "cpu", min_run_time=0.02)
    assert set(got) == {"time_ms", "time_iqr_ms", "repeats"}
    assert got["time_ms"] > 0 and got["time_iqr_ms"] >= 0 and got["repeats"] >= 5


def test_slow_call_still_gets_min_repeats():
    calls = []
    got = timing.time_callable(lambda: calls.append(1), "cpu", min_run_time=0.0, min_repeats=7)
    assert got["repeats"] >= 7


def test_same_point_twice_agrees_within_5_percent():
    # The claim: the same point (> 10 ms) timed twice in one run agrees within 5%.
    # The point is sdpa (fused kernel, ~40 ms on one thread): its time is the timer's, not the
    # allocator's. `full` at n >= 1024 allocates its 32+ MiB score matrix with a fresh mmap per
    # call, and its medians moved 4-25% between measurements on the idle build machine (the
    # page faults, see README "Results"); sub-millisecond points switch between cache states.
    # Up to three pairs are timed: one burst of load from another process must not fail it,
    # but every pair must be over 10 ms and one of them must agree within 5%.
    q, k, v = make_inputs("gaussian", 1, 8, 1024, 1024, 64, torch.float32, "cpu", 0)
    fn = timing.pass_callable("fwd", variants.create("sdpa"), q, k, v, False, q)
    pairs = []
    for _ in range(3):
        first = timing.time_callable(fn, "cpu", min_run_time=0.5)["time_ms"]
        second = timing.time_callable(fn, "cpu", min_run_time=0.5)["time_ms"]
        assert min(first, second) > 10, "the point must take over 10 ms to be in scope"
        pairs.append((first, second))
        if abs(first - second) / min(first, second) < 0.05:
            break
    assert any(abs(a - b) / min(a, b) < 0.05 for a, b in pairs), pairs


class CountingAttention(variants.AttentionVariant):
    """Test-only: exact attention that counts its forward calls."""

    name = "counting"
    exact = True

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, q, k, v, causal=False):
        self.calls += 1
        return torch.softmax(q @ k.transpose(-2, -1), -1) @ v

    def flops(self, batch, heads, q_len, kv_len, head_dim, causal):
        return 1


def test_bwd_runs_backward_only_and_fwd_bwd_both():
    q, k, v = make_inputs("gaussian", 1, 2, 16, 16, 8, torch.float32, "cpu", 0)
    grad_out = torch.ones_like(q)
    variant = CountingAttention()
    bwd = timing.pass_callable("bwd", variant, q, k, v, False, grad_out)
    assert variant.calls == 1  # the saved graph, built outside the timed region
    grads = [bwd() for _ in range(3)]
    assert variant.calls == 1
    assert all(torch.equal(a, b) for a, b in zip(grads[0], grads[2]))
    fwd_bwd = timing.pass_callable("fwd_bwd", variant, q, k, v, False, grad_out)
    fwd_bwd()
    assert variant.calls == 2
    with torch.no_grad():
        out = timing.pass_callable("fwd", variant, q, k, v, False, grad_out)()
    assert out.shape == q.shape and not out.requires_grad
    with pytest.raises(ValueError, match="pass='sideways'"):
        timing.pass_callable("sideways", variant, q, k, v, False, grad_out)


def test_slow_call_warms_up_once():
    # A call slower than a block's minimum: one warm-up call, then the timed blocks of one call
    # each (the old timer warmed up twice before every block past the first: 14 calls for 5).
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.02)

    got = timing.time_callable(slow, "cpu", min_run_time=0.0, min_repeats=5)
    assert got["repeats"] == 5 and len(calls) == 1 + 5
    calls.clear()
    got = timing.time_callable(slow, "cpu", min_run_time=0.15, min_repeats=5)
    assert len(calls) == 1 + got["repeats"] and got["repeats"] >= 5


def test_fast_call_blocks_and_warm_up():
    # Fast calls are timed in blocks of 10^k calls, each at least MIN_BLOCK_S long; the calls
    # made while growing the block are the warm-up and are not counted.
    calls = []
    got = timing.time_callable(lambda: calls.append(1), "cpu", min_run_time=0.05)
    # block size 10^i: warm-up 1 + 10 + ... + 10^i calls, then repeats blocks of 10^i
    expected = [sum(10**j for j in range(i + 1)) + got["repeats"] * 10**i for i in range(9)]
    assert len(calls) in expected, (len(calls), got)


def test_summarize_median_iqr_repeats():
    got = timing.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert got == {"time_ms": 3.0, "time_iqr_ms": 2.0, "repeats": 5}  # quartiles 2 and 4
    assert timing.summarize([7.0]) == {"time_ms": 7.0, "time_iqr_ms": 0.0, "repeats": 1}


def test_time_once_and_synchronize_are_device_safe():
    timing.synchronize("cpu")
    assert timing.time_once_ms(lambda: None, "cpu") >= 0


@pytest.mark.cuda
def test_cuda_path():
    a = torch.randn(512, 512, device="cuda")
    got = timing.time_callable(lambda: a @ a, "cuda", min_run_time=0.05)
    assert got["time_ms"] > 0 and got["repeats"] >= 5


@pytest.mark.cuda
def test_cuda_flush_l2_times_single_calls_with_events():
    a = torch.randn(1024, 1024, device="cuda")
    warm = timing.time_callable(lambda: a @ a, "cuda", min_run_time=0.05)
    flushed = timing.time_callable(lambda: a @ a, "cuda", min_run_time=0.05, flush_l2=True)
    # one call per reading: 2 GFLOP at a few hundred TFLOP/s takes tens of microseconds, so a
    # 0.05 s budget is many readings; a cold L2 can only make the median slower, never 2x faster
    assert flushed["repeats"] >= 5 and flushed["time_ms"] > 0.5 * warm["time_ms"]
    assert timing.l2_flush_buffer(torch.device("cuda")).numel() >= 2 * 2**20


def test_flush_l2_is_ignored_on_the_cpu():
    a = torch.randn(64, 64)
    got = timing.time_callable(lambda: a @ a, "cpu", min_run_time=0.02, flush_l2=True)
    assert set(got) == {"time_ms", "time_iqr_ms", "repeats"} and got["repeats"] >= 5
