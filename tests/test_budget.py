"""Over budget versus out of memory: each pass is estimated on its own, a refused pass reads
``over_budget`` with its estimate and the budget, and only a real allocation failure is ``oom``.
FLOPs per pass follow the variant's own forward and backward counts."""

from __future__ import annotations

import pytest
import torch

import variants
from harness.analysis.rows import COLUMNS, STATUSES
from harness.app.point import Point
from harness.measure import budget
from harness.measure.config import MeasureConfig
from harness.measure.factory import make_factory
from harness.tasks.attention.measure import measure
from harness.tasks.attention.passes import classify, pass_flops

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 2, 48, 48, 16)


def _point(**measure) -> Point:
    return Point(
        variant_cls=variants.get_class("full"), task="attention", variant="full", params={},
        batch=1, heads=2, q_len=48, kv_len=48, head_dim=16, dtype="float32", device="cpu",
        causal=False, inputs="gaussian", inputs_params={}, seed=0, seeds=[0],
        passes=["fwd", "bwd", "fwd_bwd"],
        measure=MeasureConfig(timing=False, memory=False, threads=1, **measure),
    )  # fmt: skip


def _full():
    return make_factory(variants.get_class("full"), {}, 48, 16)


def test_statuses_tell_over_budget_from_oom():
    assert "over_budget" in STATUSES and "oom" in STATUSES
    assert "memory_budget_bytes" in COLUMNS and "analytic_mem_bytes" in COLUMNS


def test_forward_that_fits_runs_when_forward_backward_does_not():
    # The case (full, 4 heads, n=16384: forward 8.8 GB, fwd_bwd 26 GB, budget 16 GB)
    # at a size a test can run: a budget between the two estimates.
    m = MeasureConfig(accuracy=True, attn_matrix_max_n=2048)
    variant = _full()(0)
    fwd = budget.estimate_bytes(variant, SHAPE, False, 4, "fwd", m)
    both = budget.estimate_bytes(variant, SHAPE, False, 4, "fwd_bwd", m)
    assert fwd < both
    limit_gb = (fwd + both) / 2 / 1e9
    rows = measure(_point(memory_budget_gb=limit_gb), _full())
    by = {r["pass"]: r for r in rows}
    assert by["fwd"]["status"] == "ok", by["fwd"]["reason"]
    assert by["fwd"]["rel_err"] < 1e-5
    assert by["fwd"].get("grad_rel_err") is None  # the gradient check would not fit either
    assert "gradient accuracy not measured" in by["fwd"]["notes"]
    for name in ("bwd", "fwd_bwd"):
        row = by[name]
        assert row["status"] == "over_budget"
        assert f"{both / 1e9:.2f} GB" in row["reason"]  # the estimate
        assert f"memory_budget_gb={limit_gb}" in row["reason"]  # the budget
        assert row["memory_budget_bytes"] == int(limit_gb * 1e9)
    # each row carries its own pass's model
    model_fwd = variant.analytic_mem_bytes(*SHAPE, False, element_size=4)
    assert by["fwd"]["analytic_mem_bytes"] == model_fwd
    assert by["fwd_bwd"]["analytic_mem_bytes"] == budget.BACKWARD_MEM_FACTOR * model_fwd


def test_whole_point_over_budget_allocates_nothing_and_says_so():
    rows = measure(_point(memory_budget_gb=1e-6), _full())
    assert {r["status"] for r in rows} == {"over_budget"}
    assert "memory_budget_gb=1e-06" in rows[0]["reason"]
    assert rows[0].get("setup_ms") is None  # refused before the variant ran


class AllocFails(variants.AttentionVariant):
    """Test-only: the forward runs, a pass that needs autograd fails to allocate."""

    name = "allocfails_test"
    exact = True

    def forward(self, q, k, v, causal=False):
        if torch.is_grad_enabled() and q.requires_grad:
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory"
            )
        return torch.softmax(q @ k.transpose(-2, -1) * self.softmax_scale(q.shape[-1]), -1) @ v

    def flops(self, batch, heads, q_len, kv_len, head_dim, causal):
        return 4 * batch * heads * q_len * kv_len * head_dim


def test_real_allocation_failure_stays_oom():
    rows = measure(_point(accuracy=False), lambda seed: AllocFails())
    assert [r["status"] for r in rows] == ["ok", "oom", "oom"]
    assert "DefaultCPUAllocator" in rows[2]["reason"]
    assert classify(MemoryError("x"))[0] == "oom"


class OwnBackwardModel(AllocFails):
    name = "ownmodel_test"

    def backward_mem_bytes(self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4):
        return 12345

    def backward_flops(self, batch, heads, q_len, kv_len, head_dim, causal):
        return 7 * self.flops(batch, heads, q_len, kv_len, head_dim, causal)


def test_pass_models_prefer_the_variants_own():
    assert budget.pass_model_bytes(OwnBackwardModel(), SHAPE, False, 4, "bwd") == 12345
    plain = AllocFails()
    forward = plain.analytic_mem_bytes(*SHAPE, False, element_size=4)
    assert budget.pass_model_bytes(plain, SHAPE, False, 4, "fwd") == forward
    assert budget.pass_model_bytes(plain, SHAPE, False, 4, "fwd_bwd") == 3 * forward


def test_flops_follow_the_variants_backward_count():
    # bwd is the variant's backward_flops (not a fixed 2.5x), fwd_bwd the sum
    rows = measure(_point(accuracy=False), lambda seed: OwnBackwardModel())
    fwd = OwnBackwardModel().flops(*SHAPE, False)
    assert [r["flops"] for r in rows] == [fwd, 7 * fwd, 8 * fwd]
    full = variants.create("full")
    got = pass_flops(full, SHAPE, False)
    assert got["bwd"] == full.backward_flops(*SHAPE, False)
    assert got["fwd_bwd"] == got["fwd"] + got["bwd"]


def test_flops_of_a_variant_without_backward_count_default_to_twice_forward():
    class Legacy:  # duck-typed: a plugin written before backward_flops existed
        def flops(self, *shape):
            return 10

    assert pass_flops(Legacy(), SHAPE, False) == {"fwd": 10, "bwd": 20, "fwd_bwd": 30}
