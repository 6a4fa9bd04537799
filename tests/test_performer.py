"""Performer (FAVOR+): unbiased kernel estimate, error vs nb_features, causal prefix sums."""

import math

import numpy as np
import pytest
import torch

import variants
from harness.conformance import make_qkv
from harness.measure.reference import reference_attention, reference_mask
from variants.base import VariantConfigError
from variants.performer import orthogonal_gaussian_projection, softmax_kernel_features

# Tiny shapes gain nothing from threads; on a shared box threads only wait on each other.
pytestmark = pytest.mark.usefixtures("one_thread")


def assert_close(actual, expected, rtol, atol):
    # plain allclose: torch.testing.assert_close imports torch.distributed on first use (slow)
    diff = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), f"max abs diff {diff:.3e}"


def quadratic_form(phi_q, phi_k, v, causal):
    weights = phi_q @ phi_k.transpose(-2, -1)  # (B, H, Nq, Nk)
    if causal:
        weights = weights * reference_mask(phi_q.shape[-2], phi_k.shape[-2])
    return (weights @ v) / weights.sum(-1, keepdim=True)


def test_projection_blocks_orthogonal_and_rows_gaussian_sized():
    d, m = 8, 20  # three blocks, the last one partial
    w = orthogonal_gaussian_projection(m, d, torch.Generator().manual_seed(0)).double()
    assert w.shape == (m, d)
    for start in range(0, m, d):
        block = w[start : start + d]
        gram = block @ block.T
        off_diag = gram - torch.diag(torch.diagonal(gram))
        assert off_diag.abs().max() < 1e-5, "rows of a block must be orthogonal"
    # chi(d) norms: mean of |w|^2 over many draws is d
    draws = torch.cat(
        [
            orthogonal_gaussian_projection(64, d, torch.Generator().manual_seed(s))
            for s in range(50)
        ]
    )
    assert abs(draws.double().pow(2).sum(-1).mean().item() - d) < 0.5


def test_softmax_kernel_estimate_is_unbiased():
    d, m, n_seeds = 8, 32, 1500
    gen = torch.Generator().manual_seed(1)
    x = 0.4 * torch.randn(3, d, generator=gen, dtype=torch.float64)
    y = 0.4 * torch.randn(3, d, generator=gen, dtype=torch.float64)
    exact = torch.exp(x @ y.T)  # (3, 3)
    estimates = torch.stack(
        [
            softmax_kernel_features(x, w.double()) @ softmax_kernel_features(y, w.double()).T
            for w in (
                orthogonal_gaussian_projection(m, d, torch.Generator().manual_seed(s))
                for s in range(n_seeds)
            )
        ]
    )  # (seeds, 3, 3)
    mean = estimates.mean(0)
    stderr = estimates.std(0) / math.sqrt(n_seeds)
    # within 4 standard errors and 3% of the exact kernel
    assert ((mean - exact).abs() <= 4 * stderr + 1e-12).all(), (mean / exact, stderr / exact)
    assert ((mean / exact - 1).abs() < 0.03).all(), mean / exact


def test_output_error_falls_like_inverse_sqrt_features():
    q, k, v = make_qkv((1, 2, 64, 64, 16), seed=2, dtype=torch.float64)
    q, k = 0.5 * q, 0.5 * k  # moderate logits, where the estimate is in its asymptotic regime
    ref = reference_attention(q, k, v)
    feature_counts = [16, 32, 64, 128, 256, 512]
    mean_errors = []
    for m in feature_counts:
        errs = []
        for seed in range(8):
            out = variants.create("performer", head_dim=16, nb_features=m, seed=seed)(q, k, v)
            errs.append(((out - ref).norm() / ref.norm()).item())
        mean_errors.append(np.mean(errs))
    slope = np.polyfit(np.log(feature_counts), np.log(mean_errors), 1)[0]
    assert -0.75 <= slope <= -0.3, f"log-log slope {slope:.3f}, errors {mean_errors}"


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("chunk", [1, 8, 64])
@pytest.mark.parametrize("lengths", [(45, 45), (17, 40)])
def test_causal_chunked_equals_quadratic_masked_form(kernel, chunk, lengths):
    nq, nk = lengths
    q, k, v = make_qkv((2, 2, nq, nk, 8), seed=3, dtype=torch.float64)
    module = variants.create(
        "performer", head_dim=8, nb_features=24, kernel=kernel, chunk_size=chunk, seed=0
    )
    phi_q, phi_k = module.features(q, k)
    assert_close(module(q, k, v, causal=True), quadratic_form(phi_q, phi_k, v, True), 1e-9, 1e-11)
    assert_close(module(q, k, v), quadratic_form(phi_q, phi_k, v, False), 1e-9, 1e-11)


def test_stabilisation_keeps_ratio_and_survives_large_inputs():
    q, k, v = make_qkv((1, 2, 32, 32, 8), seed=4, dtype=torch.float64)
    module = variants.create("performer", head_dim=8, nb_features=16, seed=0)
    w = module.projection.double()
    root = 8**-0.25
    raw = quadratic_form(
        softmax_kernel_features(q * root, w), softmax_kernel_features(k * root, w), v, False
    )
    assert_close(module(q, k, v), raw, 1e-9, 1e-11)  # shifts cancel in the ratio
    big = [t.float() * 12 for t in (q, k)]  # exp would overflow fp32 without the shifts
    for causal in (False, True):
        assert torch.isfinite(module(*big, v.float(), causal=causal)).all()


def test_causal_does_not_depend_on_future_keys():
    q, k, v = make_qkv((1, 2, 40, 40, 8), seed=5, dtype=torch.float64)
    module = variants.create("performer", head_dim=8, nb_features=16, chunk_size=8, seed=0)
    k2, v2 = k.clone(), v.clone()
    k2[..., 21:, :] += 2.0
    v2[..., 21:, :] -= 5.0
    a = module(q, k, v, causal=True)[..., :21, :]
    b = module(q, k2, v2, causal=True)[..., :21, :]
    assert_close(a, b, 1e-10, 1e-12)


def test_redraw_policies():
    q, k, v = make_qkv((1, 1, 16, 16, 8), seed=6)
    fixed = variants.create("performer", head_dim=8, nb_features=8, seed=3)
    assert torch.equal(fixed(q, k, v), fixed(q, k, v))
    a = variants.create("performer", head_dim=8, nb_features=8, redraw="every_call", seed=3)
    b = variants.create("performer", head_dim=8, nb_features=8, redraw="every_call", seed=3)
    first, second = a(q, k, v), a(q, k, v)
    assert not torch.equal(first, second), "every_call must draw new features per call"
    assert torch.equal(first, b(q, k, v)) and torch.equal(second, b(q, k, v))


def test_lazy_projection_without_head_dim():
    q, k, v = make_qkv((1, 1, 10, 10, 8), seed=7)
    a = variants.create("performer", nb_features=8, seed=1)
    b = variants.create("performer", head_dim=8, nb_features=8, seed=1)
    assert torch.equal(a(q, k, v), b(q, k, v))


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_finite(causal):
    q, k, v = make_qkv((1, 2, 33, 33, 8), seed=8, requires_grad=True)
    module = variants.create("performer", head_dim=8, nb_features=16, chunk_size=8)
    module(q, k, v, causal=causal).square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()


@pytest.mark.parametrize(
    "params, field",
    [
        ({"nb_features": 0}, "nb_features"),
        ({"nb_features": 2.5}, "nb_features"),
        ({"redraw": "sometimes"}, "redraw"),
        ({"kernel": "gelu"}, "kernel"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_bad_params_name_field(params, field):
    with pytest.raises(VariantConfigError, match=f"performer: {field}"):
        variants.create("performer", head_dim=8, **params)
