"""The speed table: sdpa and every variant in every pass, ratios taken within one round.

Every pass of :data:`~harness.measure.speedcheck.targets.PASSES` is measured in ``rounds``
rounds; each round times ``sdpa`` and then every variant (the order reversed every other round),
so a ratio divides two times taken seconds apart. A cell's speed-up is the median over rounds of
those per-round ratios, against ``sdpa`` in the same pass and masking. Each variant's engine
knobs are tuned (or read from the cache) before its first call (:mod:`variants.tuning`).
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import variants
from harness.measure import env, timing
from harness.measure.factory import make_factory
from harness.measure.speedcheck.targets import PASSES, SpeedVariant, load_targets
from variants.base import AttentionVariant

#: ``timer(fn) -> milliseconds``: one median time of a zero-argument callable.
Timer = Callable[[Callable[[], Any]], float]


def build(name: str, params: dict[str, Any], kv_len: int, head_dim: int) -> AttentionVariant:
    """The registered variant ``name`` with ``params``, built for ``kv_len`` and ``head_dim``."""
    return make_factory(variants.get_class(name), params, kv_len, head_dim)(0)


@dataclass
class Cell:
    """One variant in one pass: per-round times (ms) of it and of sdpa, or why it did not run."""

    name: str
    label: str
    target: float | None = None  # minimum speed-up over sdpa; None: no verdict
    times: list[float] = field(default_factory=list)
    sdpa_times: list[float] = field(default_factory=list)
    flops: int = 0
    note: str | None = None
    tuned: dict[str, Any] = field(default_factory=dict)  # the engine knobs it ran with

    @property
    def ratio(self) -> float:
        """Median over rounds of sdpa's time over the variant's, both from the same round."""
        return statistics.median(s / t for s, t in zip(self.sdpa_times, self.times))

    @property
    def ratio_range(self) -> tuple[float, float]:
        ratios = [s / t for s, t in zip(self.sdpa_times, self.times)]
        return min(ratios), max(ratios)

    @property
    def time_ms(self) -> float:
        return statistics.median(self.times)

    @property
    def verdict(self) -> str:
        """``PASS`` or ``FAIL`` against the target; empty without one or without times."""
        if self.target is None or not self.times:
            return ""
        return "PASS" if self.ratio >= self.target else "FAIL"


@dataclass
class Table:
    """Everything the markdown report shows, per pass."""

    setup: dict[str, Any]
    passes: dict[tuple[str, bool], dict[str, Cell]]
    sdpa: dict[tuple[str, bool], Cell]
    matmul_gflops: float


def median_timer(device: str, min_run_time: float) -> Timer:
    """A :data:`Timer` built on :func:`harness.measure.timing.time_callable`.

    On CUDA every call is timed alone after an L2 flush (``flush_l2``), as the gpu presets do.
    """
    flush = torch.device(device).type == "cuda"

    def timer(fn: Callable[[], Any]) -> float:
        return float(timing.time_callable(fn, device, min_run_time, 1, flush_l2=flush)["time_ms"])

    return timer


def _pass_work(module: AttentionVariant, pass_name: str, shape: tuple, causal: bool) -> int:
    flops = module.flops(*shape, causal)
    return flops + module.backward_flops(*shape, causal) if pass_name == "fwd_bwd" else flops


def measure_table(
    seq_len: int, heads: int, head_dim: int, batch: int = 1, device: str = "cpu",
    dtype: torch.dtype = torch.float32, rounds: int = 3, timer: Timer | None = None,
    table_variants: Sequence[SpeedVariant] | None = None,
    on_pass: Callable[[Table], Any] | None = None,
) -> Table:  # fmt: skip
    """Time sdpa and every variant in every pass (module docstring).

    Args:
        seq_len, heads, head_dim, batch: The self-attention shape (q_len = kv_len = seq_len).
        device, dtype: Where and in what the inputs live.
        rounds: Rounds per pass; each times sdpa, then every variant (reversed every other).
        timer: ``timer(fn) -> ms``; default :func:`median_timer` with 0.5 s per reading.
        table_variants: The columns and their targets; default the ``speed`` list of
            :func:`~harness.measure.speedcheck.targets.load_targets`.
        on_pass: Called with the table after each pass (the command line writes it out).
    """
    timer = timer or median_timer(device, 0.5)
    columns = list(table_variants if table_variants is not None else load_targets().speed)
    shape = (batch, heads, seq_len, seq_len, head_dim)
    gen = torch.Generator().manual_seed(0)
    q, k, v, grad = (
        torch.randn(batch, heads, seq_len, head_dim, generator=gen).to(device, dtype)
        for _ in range(4)
    )
    table = Table(
        setup={"shape": shape, "device": device, "dtype": str(dtype).replace("torch.", "")},
        passes={}, sdpa={}, matmul_gflops=env.matmul_tflops(device, dtype) * 1e3,
    )  # fmt: skip
    sdpa_column = SpeedVariant(variant="sdpa", label="sdpa")
    for pass_name, causal, _ in PASSES:
        cells, runs = {}, {}
        for column in [sdpa_column, *columns]:
            label = str(column.label)
            cell = cells[label] = Cell(column.variant, label, column.target(pass_name, causal))
            try:
                module = build(column.variant, dict(column.params), seq_len, head_dim).to(device)
                reasons = module.not_supported_reasons(q, k, v, causal)
                if reasons:
                    cell.note = "; ".join(reasons)
                    continue
                module.setup(q, k, v, causal)  # one-time work (masks, compilation): untimed
                cell.tuned = module.tune(q, k, v, causal)  # the engine knobs, before timing
                fn = timing.pass_callable(pass_name, module, q, k, v, causal, grad)
                fn()  # lazy state, allocator warm-up
                runs[label] = fn
                cell.flops = _pass_work(module, pass_name, shape, causal)
                if hasattr(module, "resolved_backend"):
                    cell.label += f" ({module.resolved_backend(q, k, v, causal)})"
            except Exception as exc:  # reported in the table, the run goes on
                cell.note = f"{type(exc).__name__}: {exc}"
                runs.pop(label, None)
        for r in range(rounds):
            order = [lab for lab in runs if lab != "sdpa"]
            sdpa_ms = timer(runs["sdpa"]) if "sdpa" in runs else float("nan")
            for label in order if r % 2 == 0 else order[::-1]:
                cells[label].times.append(timer(runs[label]))
                cells[label].sdpa_times.append(sdpa_ms)
            cells["sdpa"].times.append(sdpa_ms)
            cells["sdpa"].sdpa_times.append(sdpa_ms)
        table.sdpa[(pass_name, causal)] = cells.pop("sdpa")
        table.passes[(pass_name, causal)] = cells
        print(f"  {pass_name} causal={causal}: done", file=sys.stderr)
        if on_pass is not None:
            on_pass(table)
    return table
