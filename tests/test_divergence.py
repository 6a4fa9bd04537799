"""Effective-matrix divergences: definitions by hand, independent of any floor, and what they
say of a sparse variant (missing mass) and of Linformer (rows that are not distributions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import variants
from harness.analysis.rows import COLUMNS
from harness.measure import accuracy, divergence
from harness.measure.divergence import attention_divergence
from harness.measure.inputs import make_inputs

pytestmark = pytest.mark.usefixtures("one_thread")

#: The divergence columns of the row contract.
DIVERGENCES = [c for c in COLUMNS if c.startswith("attn_")]


def test_divergence_by_hand_with_negative_entries():
    exact = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    approx = torch.tensor([[0.6, 0.6, -0.2], [0.2, 0.3, 0.5]], dtype=torch.float64)
    got = attention_divergence(exact, approx)
    assert set(got) == set(DIVERGENCES)
    # Row 1: TV = 0.5 * (0.1 + 0.1 + 0.2) = 0.2; on the support {0, 1} both rows renormalise to
    # [0.5, 0.5], so the KL there is 0 (the old clamp-and-renormalise KL was 0 too); the row
    # sums to 1.0 but holds -0.2 of negative weight. Row 2 is exact.
    assert got["attn_tv"] == pytest.approx(0.1)
    assert got["attn_kl_support"] == pytest.approx(0.0, abs=1e-12)
    assert got["attn_js"] == pytest.approx(0.0, abs=1e-12)
    assert got["attn_missing_mass"] == 0.0
    assert got["attn_row_sum_err"] == pytest.approx(0.0, abs=1e-12)
    assert got["attn_negative_mass"] == pytest.approx(0.1)
    # A zero where the exact row has mass: the old KL read log(0.5 / 1e-12) there (a floor);
    # now the dropped mass is counted as such and the rest is bounded.
    got = attention_divergence(exact[:1], torch.tensor([[1.0, 0.0, 0.0]]))
    assert got["attn_missing_mass"] == pytest.approx(0.5)
    assert got["attn_tv"] == pytest.approx(0.5)
    assert got["attn_kl_support"] == pytest.approx(0.0, abs=1e-12)  # support {0}: P_S = A_S
    # M = [0.75, 0.25, 0]: JS = 0.5 * 0.5 ln(4/3) + 0.5 * ln(4/3)  (both halves by hand)
    assert got["attn_js"] == pytest.approx(0.75 * math.log(4 / 3))


def test_js_is_bounded_by_ln2_and_reaches_it_on_disjoint_rows():
    gen = torch.Generator().manual_seed(0)
    exact = torch.softmax(torch.randn(200, 30, generator=gen, dtype=torch.float64), -1)
    approx = torch.randn(200, 30, generator=gen, dtype=torch.float64)  # negative entries too
    per_row = divergence.jensen_shannon(exact, approx)
    assert (per_row >= -1e-15).all() and (per_row <= math.log(2) + 1e-12).all()
    disjoint = attention_divergence(
        torch.tensor([[0.5, 0.5, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 0.3, 0.7]])
    )
    assert disjoint["attn_js"] == pytest.approx(math.log(2))
    assert disjoint["attn_missing_mass"] == pytest.approx(1.0)
    # no exact mass on the variant's support: no KL there (null), never a floor-made number
    assert disjoint["attn_kl_support"] is None
    no_positive = attention_divergence(torch.tensor([[0.5, 0.5]]), torch.tensor([[-1.0, 0.0]]))
    assert no_positive["attn_js"] == pytest.approx(math.log(2))


@pytest.mark.parametrize("floor", [1e-6, 1e-12, 1e-30])
def test_no_value_depends_on_a_floor(monkeypatch, floor):
    # The old attn_kl of a sparse row was decided by its clamp floor (KL_FLOOR): about 27.6 x
    # the missing mass at 1e-12. A floor constant, wherever one might be looked up, changes
    # nothing now: the figures are computed without one.
    for module in (accuracy, divergence):
        monkeypatch.setattr(module, "KL_FLOOR", floor, raising=False)
    exact = torch.softmax(torch.randn(4, 6, 10, dtype=torch.float64), -1)
    approx = exact.clone()
    approx[..., 5:] = 0  # a sparse variant: exact zeros where softmax has mass
    approx = approx / approx.sum(-1, keepdim=True)
    got = attention_divergence(exact, approx)
    missing = exact[..., 5:].sum(-1).mean().item()
    assert got["attn_missing_mass"] == pytest.approx(missing, rel=1e-12)
    assert got["attn_tv"] == pytest.approx(missing, rel=1e-12)  # restricted softmax: TV = missing
    assert got["attn_kl_support"] == pytest.approx(0.0, abs=1e-12)
    assert all(math.isfinite(got[c]) for c in DIVERGENCES)


def _window_mask(nq: int, nk: int, window: int, causal: bool) -> np.ndarray:
    """Keys query i may see in a sliding window, written here from the definition."""
    pos = np.arange(nq)[:, None] + (nk - nq)
    j = np.arange(nk)[None, :]
    right = 0 if causal else window
    return (j >= pos - window) & (j <= pos + right)


def _numpy_probs(q, k, causal):
    qn, kn = q[:1].double().numpy(), k[:1].double().numpy()
    nq, nk = qn.shape[-2], kn.shape[-2]
    s = qn @ np.swapaxes(kn, -1, -2) / math.sqrt(qn.shape[-1])
    if causal:
        s = np.where(np.arange(nk)[None] <= np.arange(nq)[:, None] + (nk - nq), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)  # (1, H, Nq, Nk)


@pytest.mark.parametrize(("nq", "nk", "causal"), [(40, 40, False), (40, 40, True), (24, 40, True)])
def test_sparse_variant_missing_mass_is_the_mass_outside_its_window(nq, nk, causal):
    window = 5
    q, k, v = make_inputs("gaussian", 1, 2, nq, nk, 16, torch.float32, "cpu", 5, temperature=2)
    variant = variants.create("local", window=window)
    got = accuracy.accuracy_once(variant, q, k, v, causal, 0.25, 0, False, 64)
    p = _numpy_probs(q, k, causal)
    outside = ~_window_mask(nq, nk, window, causal)
    expected = (p * outside).sum(-1).mean()
    assert expected > 0.05  # a real loss of mass
    assert got["attn_missing_mass"] == pytest.approx(expected, rel=1e-5)
    # the variant is softmax restricted to its window: exact there, so TV = missing mass
    assert got["attn_kl_support"] < 1e-6
    assert got["attn_tv"] == pytest.approx(expected, rel=1e-4)
    assert got["attn_js"] <= math.log(2)
    assert got["attn_row_sum_err"] < 1e-5 and got["attn_negative_mass"] == 0


def test_linformer_rows_are_not_distributions():
    q, k, v = make_inputs("gaussian", 1, 2, 48, 48, 16, torch.float32, "cpu", 6)
    linformer = variants.create("linformer", kv_len=48, head_dim=16, k=8)
    got = accuracy.accuracy_once(linformer, q, k, v, False, 0.25, 0, False, 64)
    assert got["attn_row_sum_err"] > 0.01 and got["attn_negative_mass"] > 0.01
    exact = accuracy.accuracy_once(variants.create("full"), q, k, v, False, 0.25, 0, False, 64)
    assert exact["attn_row_sum_err"] < 1e-5 and exact["attn_negative_mass"] == 0
