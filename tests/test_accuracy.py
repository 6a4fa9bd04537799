"""Accuracy metrics against independent computations (numpy float64, autograd, by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import variants
from harness.measure import accuracy
from harness.measure.inputs import make_inputs
from harness.measure.reference import reference_grads, reference_probs
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
    assert "attn_kl" not in got  # max_n = 0: no matrix


def test_blocked_reference_equals_unblocked(monkeypatch):
    monkeypatch.setattr(accuracy, "REF_BLOCK_ELEMENTS", 2 * 3 * 45 * 7)  # 7 rows per block
    q, k, v = make_inputs("gaussian", 2, 3, 30, 45, 16, torch.float32, "cpu", 1)
    out = accuracy.reference_output(q, k, v, True, 0.25)
    np.testing.assert_allclose(out.numpy(), _numpy_attention(q, k, v, True), rtol=1e-10)
    grad_out = accuracy.upstream_grad(out.shape, torch.float64, "cpu", 0)
    mine = accuracy.reference_gradients(q, k, v, grad_out, True, 0.25)
    autograd = reference_grads(q, k, v, grad_out, causal=True)
    for a, b in zip(mine, autograd):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_grad_rel_err_combines_the_three_gradients():
    refs = (torch.ones(4), torch.ones(4), torch.ones(8))
    grads = (torch.ones(4) * 1.5, torch.ones(4), torch.ones(8))  # error 0.5 * 2 over norm^2 16
    assert accuracy.grad_rel_error(grads, refs) == pytest.approx(math.sqrt(1.0 / 16))


def test_exact_variant_grad_error_is_tiny():
    q, k, v = make_inputs("gaussian", 1, 2, 33, 33, 16, torch.float32, "cpu", 2)
    got = accuracy.accuracy_once(variants.create("full"), q, k, v, True, 0.25, 0, True, 64)
    assert got["rel_err"] < 1e-5 and got["grad_rel_err"] < 1e-4
    assert got["attn_kl"] < 1e-9 and got["attn_tv"] < 1e-5


@pytest.mark.parametrize(("nq", "nk", "causal"), [(33, 50, True), (40, 40, False)])
def test_effective_attention_of_exact_variant_is_softmax(nq, nk, causal):
    # nk is not a multiple of head_dim, so the last identity block is padded
    q, k, _ = make_inputs("gaussian", 2, 3, nq, nk, 16, torch.float64, "cpu", 3)
    got = accuracy.effective_attention(variants.create("full"), q, k, causal)
    assert got.shape == (1, 3, nq, nk)
    torch.testing.assert_close(got, reference_probs(q[:1], k[:1], causal=causal))


def test_divergence_by_hand_with_negative_entries():
    exact = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    approx = torch.tensor([[0.6, 0.6, -0.2], [0.2, 0.3, 0.5]], dtype=torch.float64)
    got = accuracy.attention_divergence(exact, approx)
    # Row 1: TV = 0.5 * (0.1 + 0.1 + 0.2) = 0.2; clamped row [0.6, 0.6, 0] renormalises to
    # [0.5, 0.5, 0], so KL = 0. Row 2 is exact.
    assert got["attn_tv"] == pytest.approx(0.1)
    assert got["attn_kl"] == pytest.approx(0.0, abs=1e-12)
    # A zero where the exact row has mass costs log(p / 1e-12), finite.
    got = accuracy.attention_divergence(exact[:1], torch.tensor([[1.0, 0.0, 0.0]]))
    assert got["attn_kl"] == pytest.approx(0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-12))


def test_summarize_mean_and_population_std():
    out = accuracy.summarize(
        [{"rel_err": 1.0, "grad_rel_err": 2.0}, {"rel_err": 3.0, "grad_rel_err": 2.0}]
    )
    assert out["rel_err"] == 2.0 and out["rel_err_std"] == 1.0
    assert out["grad_rel_err"] == 2.0 and out["grad_rel_err_std"] == 0.0


def test_upstream_grad_is_seeded_and_nonzero():
    a = accuracy.upstream_grad(torch.Size((2, 3)), torch.float32, "cpu", 0)
    assert torch.equal(a, accuracy.upstream_grad(torch.Size((2, 3)), torch.float32, "cpu", 0))
    assert (a != 0).all()
