"""pytest-benchmark of every registered variant: forward and forward+backward over lengths.

Skipped by the default test run (``--benchmark-skip`` in pyproject's addopts); run with::

    pytest tests/benchmarks --benchmark-only                       # everything
    pytest tests/benchmarks --benchmark-only -k "sdpa and 1024"    # a selection
    pytest tests/benchmarks --benchmark-only --benchmark-json=bench.json

Each benchmark is one variant, one length and one pass, self-attention with batch 1, 8 heads and
head_dim 64 on fresh random inputs. ``fwd`` is the inference forward (under ``no_grad``);
``fwd_bwd`` is a forward and a backward from a random output gradient on new leaf tensors each
round. On CUDA the timed function synchronises before it returns, so the host clock measures the
kernels and not their launch. ``extra_info`` holds the variant, shape, pass, analytic FLOPs
(backward counted as 2.5x forward) and the achieved GFLOP/s from the measured mean; results are
grouped by length (self-attention: q_len = kv_len). Variants that cannot run these inputs
(device, dtype, missing package, bad default for the length) are skipped with their reasons.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import variants
from harness.conformance import build
from harness.tasks.attention.passes import pass_flops

BATCH, HEADS, HEAD_DIM = 1, 8, 64
PASSES = ("fwd", "fwd_bwd")
#: Points whose analytic forward memory exceeds this are skipped instead of risking an OOM.
MEMORY_LIMIT_BYTES = 8 * 2**30


def _rounds(length: int) -> tuple[int, int]:
    """(rounds, warmup_rounds): fewer rounds for longer sequences keep the suite short."""
    if length <= 512:
        return 20, 3
    if length <= 2048:
        return 8, 2
    return 3, 1


def _sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("name", variants.available())
def test_variant(
    benchmark: Any,
    name: str,
    pass_name: str,
    bench_seq_len: int,
    bench_device: str,
    bench_dtype: torch.dtype,
) -> None:
    n = bench_seq_len
    try:
        module = build(name, kv_len=n, head_dim=HEAD_DIM).to(bench_device)
    except Exception as exc:  # a variant that cannot be built is skipped, named
        pytest.skip(f"{name}: cannot be built for kv_len={n}: {type(exc).__name__}: {exc}")
    gen = torch.Generator().manual_seed(n)
    q, k, v = (
        torch.randn(BATCH, HEADS, n, HEAD_DIM, generator=gen).to(bench_device, bench_dtype)
        for _ in range(3)
    )
    reasons = module.not_supported_reasons(q, k, v, causal=False)
    if pass_name == "fwd_bwd" and not module.supports_backward:
        reasons.append(f"{name}: backward is not supported")
    mem = module.analytic_mem_bytes(BATCH, HEADS, n, n, HEAD_DIM, False, q.element_size())
    if mem > MEMORY_LIMIT_BYTES:
        reasons.append(f"{name}: analytic memory {mem / 2**30:.1f} GiB above the benchmark limit")
    if reasons:
        pytest.skip("; ".join(reasons))
    module.setup(q, k, v, causal=False)
    sync = _sync(bench_device)

    if pass_name == "fwd":

        def setup() -> tuple[tuple, dict]:
            return (q, k, v), {}

        def target(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
            with torch.no_grad():
                module(q, k, v)
            sync()

    else:
        grad_out = torch.randn(BATCH, HEADS, n, HEAD_DIM, generator=gen).to(q)

        def setup() -> tuple[tuple, dict]:
            # new leaves every round, so gradients never accumulate across rounds
            return tuple(t.detach().requires_grad_() for t in (q, k, v)), {}

        def target(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
            module(q, k, v).backward(grad_out)
            sync()

    flops = pass_flops(module, (BATCH, HEADS, n, n, HEAD_DIM), False)[pass_name]
    benchmark.group = f"seq_len={n}"
    benchmark.extra_info.update(
        variant=name, q_len=n, kv_len=n, batch=BATCH, heads=HEADS, head_dim=HEAD_DIM,
        dtype=str(bench_dtype).replace("torch.", ""), device=bench_device, causal=False,
        **{"pass": pass_name}, flops=flops,
    )  # fmt: skip
    rounds, warmup_rounds = _rounds(n)
    benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=warmup_rounds)
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is not None and stats.stats.mean > 0:
        benchmark.extra_info["gflops_per_s"] = round(flops / stats.stats.mean / 1e9, 3)
