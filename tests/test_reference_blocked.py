"""The float64 reference works at every length: computed over blocks of query rows (equal to the
whole-matrix reference, causal and cross included, values and gradients), and over a seeded
sample of rows where even that would cost too much (``ref_rows`` in the row)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import variants
from harness.app.point import Point
from harness.measure import accuracy
from harness.measure.config import MeasureConfig
from harness.measure.factory import make_factory
from harness.measure.inputs import make_inputs
from harness.measure.reference import reference_attention, reference_grads
from harness.tasks.attention.measure import measure

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = [(30, 45, True), (30, 45, False), (40, 40, True), (45, 30, False)]


def _seven_rows_per_block(monkeypatch, q, k):
    b, h, _, _ = q.shape
    monkeypatch.setattr(accuracy, "REF_BLOCK_ELEMENTS", b * h * k.shape[-2] * 7)


@pytest.mark.parametrize(("nq", "nk", "causal"), SHAPES)
def test_blocked_reference_equals_whole_matrix(monkeypatch, nq, nk, causal):
    q, k, v = make_inputs("gaussian", 2, 3, nq, nk, 16, torch.float32, "cpu", 1)
    _seven_rows_per_block(monkeypatch, q, k)
    assert len(accuracy._blocks(q, k, None)) == -(-nq // 7)  # really blocked
    out = accuracy.reference_output(q, k, v, causal, 0.25)
    whole = reference_attention(q, k, v, causal=causal)  # one (B, H, Nq, Nk) matrix
    torch.testing.assert_close(out, whole, rtol=1e-12, atol=1e-14)
    grad_out = accuracy.upstream_grad(out.shape, torch.float64, "cpu", 0)
    mine = accuracy.reference_gradients(q, k, v, grad_out, causal, 0.25)
    autograd = reference_grads(q, k, v, grad_out, causal=causal)
    for a, b in zip(mine, autograd):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("nq", "nk", "causal"), SHAPES)
def test_sampled_rows_reference_equals_whole_matrix_rows(monkeypatch, nq, nk, causal):
    q, k, v = make_inputs("gaussian", 1, 2, nq, nk, 16, torch.float32, "cpu", 2)
    _seven_rows_per_block(monkeypatch, q, k)
    rows = accuracy.sample_rows(nq, 11, seed=3)
    out = accuracy.reference_output(q, k, v, causal, 0.25, rows)
    whole = reference_attention(q, k, v, causal=causal)
    torch.testing.assert_close(out, whole[:, :, rows], rtol=1e-12, atol=1e-14)
    # The gradient of <dO, O> with dO zero outside the rows, from those rows alone.
    grad_out = accuracy.upstream_grad(whole.shape, torch.float64, "cpu", 0)
    keep = torch.zeros(nq, dtype=torch.bool)
    keep[rows] = True
    masked = grad_out * keep[:, None]
    mine = accuracy.reference_gradients(q, k, v, masked[:, :, rows], causal, 0.25, rows)
    autograd = reference_grads(q, k, v, masked, causal=causal)
    for a, b in zip(mine, autograd):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_sample_is_seeded_sorted_and_distinct():
    a = accuracy.sample_rows(1000, 128, seed=0)
    assert torch.equal(a, accuracy.sample_rows(1000, 128, seed=0))
    assert not torch.equal(a, accuracy.sample_rows(1000, 128, seed=1))
    assert len(set(a.tolist())) == 128 and torch.all(a[1:] > a[:-1])


def test_reference_rows_follow_the_work_limit():
    work = accuracy.reference_flops(1, 16, 65536, 65536, 64, backward=True)
    assert work == 16 * 65536**2 * (4 * 64 + 10 * 64)
    assert accuracy.reference_rows(work, 65536, None) is None  # no limit: every row
    assert accuracy.reference_rows(work, 65536, work) is None  # within the limit
    rows = accuracy.reference_rows(work, 65536, work / 64)
    assert rows == 65536 // 64  # the work scales with the rows covered
    assert accuracy.reference_rows(work, 65536, 1.0) == accuracy.MIN_REF_ROWS
    assert accuracy.reference_rows(work, 100, 1.0) is None  # a sample of all rows is all rows


def test_accuracy_on_sampled_rows_matches_numpy():
    q, k, v = make_inputs("gaussian", 1, 2, 60, 60, 16, torch.float32, "cpu", 3)
    variant = variants.create("local", window=4)
    rows = accuracy.sample_rows(60, 13, seed=0)
    got = accuracy.accuracy_once(variant, q, k, v, True, 0.25, 0, True, 0, rows)
    out = variant(q, k, v, causal=True).double()[:, :, rows].numpy()
    ref = reference_attention(q, k, v, causal=True)[:, :, rows].numpy()
    expected = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert got["rel_err"] == pytest.approx(expected, rel=1e-9)
    assert got["max_abs_err"] == pytest.approx(np.abs(out - ref).max(), rel=1e-9)
    assert 0 < got["grad_rel_err"] < 10


def _point(q_len: int, **measure) -> Point:
    return Point(
        variant_cls=variants.get_class("local"), task="attention", variant="local", params={},
        batch=1, heads=1, q_len=q_len, kv_len=q_len, head_dim=8, dtype="float32", device="cpu",
        causal=True, inputs="gaussian", inputs_params={}, seed=0, seeds=[0], passes=["fwd"],
        measure=MeasureConfig(timing=False, memory=False, threads=1, **measure),
    )  # fmt: skip


def test_rows_say_how_many_query_rows_the_reference_covered():
    factory = make_factory(variants.get_class("local"), {"window": 8}, 512, 8)
    (row,) = measure(_point(512), factory)
    assert row["status"] == "ok" and row["ref_rows"] is None  # all rows
    work = accuracy.reference_flops(1, 1, 512, 512, 8, backward=True)
    (sampled,) = measure(_point(512, reference_max_work=work / 2), factory)
    assert sampled["status"] == "ok", sampled["reason"]
    assert sampled["ref_rows"] == 256
    # the same variant on a sample of its rows: the same error, within sampling noise
    assert sampled["rel_err"] == pytest.approx(row["rel_err"], rel=0.2)
