"""Accuracy metrics against independent computations (numpy float64, autograd, by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import variants
from harness.measure import accuracy
from harness.measure.inputs import make_inputs
from harness.measure.reference import reference_probs
from variants.base import AttentionVariant

# Tiny tensors: one thread avoids OpenMP spin-waiting on a shared, loaded machine.
pytestmark = pytest.mark.usefixtures("one_thread")


class NoisyAttention(AttentionVariant):
    """Test-only: exact attention plus a fixed seeded perturbation of the output."""

    name = "noisy"
    exact = False

    def __init__(self, eps: float = 1e-2, seed: int = 0):
        super().__init__()
        self.eps, self.seed = eps, seed

    def forward(self, q, k, v, causal=False):
        out = variants.create("full")(q, k, v, causal=causal)
        gen = torch.Generator().manual_seed(self.seed)
        return out + self.eps * torch.randn(out.shape, generator=gen, dtype=out.dtype)

    def flops(self, batch, heads, q_len, kv_len, head_dim, causal):
        return 4 * batch * heads * q_len * kv_len * head_dim


def _numpy_attention(q, k, v, causal):
    q, k, v = (t.detach().double().numpy() for t in (q, k, v))
    nq, nk = q.shape[-2], k.shape[-2]
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if causal:
        allowed = np.arange(nk)[None, :] <= np.arange(nq)[:, None] + (nk - nq)
        s = np.where(allowed, s, -np.inf)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    return (p / p.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_rel_err_matches_numpy(causal, eps):
    q, k, v = make_inputs("gaussian", 2, 3, 30, 45, 16, torch.float32, "cpu", 0, temperature=2)
    variant = NoisyAttention(eps=eps)
    got = accuracy.accuracy_once(variant, q, k, v, causal, 0.25, 0, False, 0)
    out = variant(q, k, v, causal=causal).double().numpy()
    ref = _numpy_attention(q, k, v, causal)
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert got["rel_err"] == pytest.approx(rel, rel=1e-9, abs=1e-12)
    assert got["max_abs_err"] == pytest.approx(np.abs(out - ref).max(), rel=1e-9, abs=1e-12)
    cos = (out * ref).sum(-1) / np.linalg.norm(out, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert got["cosine"] == pytest.approx(cos.mean(), rel=1e-9)
    assert "attn_tv" not in got and "attn_js" not in got  # max_n = 0: no matrix


def _numpy_uniform(v, nq, causal):
    """Uniform attention by hand: each query averages V over the keys it may see."""
    v = v.double().numpy()
    nk = v.shape[-2]
    out = np.zeros((*v.shape[:2], nq, v.shape[-1]))
    for i in range(nq):
        last = i + nk - nq if causal else nk - 1
        out[:, :, i] = v[:, :, : last + 1].mean(-2)
    return out


@pytest.mark.parametrize(("nq", "nk", "causal"), [(30, 45, True), (30, 45, False), (20, 20, True)])
def test_baselines_match_numpy(nq, nk, causal):
    # Every accuracy row carries the error of outputting zeros (1 by definition) and of
    # uniform attention (causal-aware, bottom-right aligned), on the same inputs.
    q, k, v = make_inputs("gaussian", 2, 3, nq, nk, 16, torch.float32, "cpu", 4)
    got = accuracy.accuracy_once(variants.create("full"), q, k, v, causal, 0.25, 0, False, 0)
    ref = _numpy_attention(q, k, v, causal)
    uniform = _numpy_uniform(v, nq, causal)
    assert got["baseline_zeros_rel_err"] == 1.0
    expected = np.linalg.norm(uniform - ref) / np.linalg.norm(ref)
    assert got["baseline_uniform_rel_err"] == pytest.approx(expected, rel=1e-9)
    assert 0 < got["baseline_uniform_rel_err"] < 1


def test_grad_rel_err_combines_the_three_gradients():
    refs = (torch.ones(4), torch.ones(4), torch.ones(8))
    grads = (torch.ones(4) * 1.5, torch.ones(4), torch.ones(8))  # error 0.5 * 2 over norm^2 16
    assert accuracy.grad_rel_error(grads, refs) == pytest.approx(math.sqrt(1.0 / 16))


def test_exact_variant_grad_error_is_tiny():
    q, k, v = make_inputs("gaussian", 1, 2, 33, 33, 16, torch.float32, "cpu", 2)
    got = accuracy.accuracy_once(variants.create("full"), q, k, v, True, 0.25, 0, True, 64)
    assert got["rel_err"] < 1e-5 and got["grad_rel_err"] < 1e-4
    # was: attn_kl < 1e-9 (a KL of the exact rows); now the floor-free divergences
    assert got["attn_kl_support"] < 1e-9 and got["attn_js"] < 1e-9
    assert got["attn_missing_mass"] < 1e-9 and got["attn_tv"] < 1e-5
    assert got["attn_row_sum_err"] < 1e-5 and got["attn_negative_mass"] == 0


@pytest.mark.parametrize(("nq", "nk", "causal"), [(33, 50, True), (40, 40, False)])
def test_effective_attention_of_exact_variant_is_softmax(nq, nk, causal):
    # nk is not a multiple of head_dim, so the last identity block is padded
    q, k, _ = make_inputs("gaussian", 2, 3, nq, nk, 16, torch.float64, "cpu", 3)
    got = accuracy.effective_attention(variants.create("full"), q, k, causal)
    assert got.shape == (1, 3, nq, nk)
    torch.testing.assert_close(got, reference_probs(q[:1], k[:1], causal=causal))


def test_summarize_mean_and_population_std():
    out = accuracy.summarize(
        [{"rel_err": 1.0, "grad_rel_err": 2.0}, {"rel_err": 3.0, "grad_rel_err": 2.0}]
    )
    assert out["rel_err"] == 2.0 and out["rel_err_std"] == 1.0
    assert out["grad_rel_err"] == 2.0 and out["grad_rel_err_std"] == 0.0
    # a metric one seed could not compute is left out of the mean, never a crash
    out = accuracy.summarize([{"attn_kl_support": None}, {"attn_kl_support": 0.5}])
    assert out["attn_kl_support"] == 0.5
    assert accuracy.summarize([{"attn_kl_support": None}])["attn_kl_support"] is None


def test_upstream_grad_is_seeded_and_nonzero():
    a = accuracy.upstream_grad(torch.Size((2, 3)), torch.float32, "cpu", 0)
    assert torch.equal(a, accuracy.upstream_grad(torch.Size((2, 3)), torch.float32, "cpu", 0))
    assert (a != 0).all()
