"""Linear attention (elu + 1) and the chunked causal prefix sums of variants._prefix."""

import pytest
import torch
import torch.nn.functional as F

import variants
from harness.conformance import make_qkv
from harness.measure.reference import reference_mask
from variants._prefix import causal_linear_attention
from variants.base import VariantConfigError

# Tiny shapes gain nothing from threads; on a shared box threads only wait on each other.
pytestmark = pytest.mark.usefixtures("one_thread")


def assert_close(actual, expected, rtol, atol):
    # plain allclose: torch.testing.assert_close imports torch.distributed on first use (slow)
    diff = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), f"max abs diff {diff:.3e}"


def quadratic_form(phi_q, phi_k, v, causal):
    """(phi_q phi_k^T, masked) v / row sums: the O(n^2) form of kernel attention."""
    weights = phi_q @ phi_k.transpose(-2, -1)  # (B, H, Nq, Nk)
    if causal:
        weights = weights * reference_mask(phi_q.shape[-2], phi_k.shape[-2])
    return (weights @ v) / weights.sum(-1, keepdim=True)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 45, 45, 8), (1, 2, 19, 50, 8), (1, 1, 1, 7, 4)])
def test_equals_its_quadratic_form(shape, causal):
    q, k, v = make_qkv(shape, seed=0, dtype=torch.float64)
    out = variants.create("linear", chunk_size=16)(q, k, v, causal=causal)
    ref = quadratic_form(F.elu(q) + 1, F.elu(k) + 1, v, causal)
    assert_close(out, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 5, 16, 64, 500])
@pytest.mark.parametrize("lengths", [(64, 64), (37, 37), (23, 71)])
def test_chunked_prefix_sums_equal_masked_quadratic(chunk, lengths):
    nq, nk = lengths
    gen = torch.Generator().manual_seed(1)
    phi_q = torch.rand(2, 2, nq, 6, generator=gen, dtype=torch.float64)
    phi_k = torch.rand(2, 2, nk, 6, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 2, nk, 5, generator=gen, dtype=torch.float64)
    out = causal_linear_attention(phi_q, phi_k, v, chunk)
    weights = (phi_q @ phi_k.transpose(-2, -1)) * reference_mask(nq, nk)
    assert_close(out, weights @ v, rtol=1e-10, atol=1e-12)


def test_causal_does_not_depend_on_future_keys():
    q, k, v = make_qkv((1, 2, 40, 40, 8), seed=2, dtype=torch.float64)
    module = variants.create("linear", chunk_size=7)
    k2, v2 = k.clone(), v.clone()
    k2[..., 25:, :] += 5.0
    v2[..., 25:, :] -= 5.0
    a = module(q, k, v, causal=True)[..., :25, :]
    b = module(q, k2, v2, causal=True)[..., :25, :]
    assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_finite(causal):
    q, k, v = make_qkv((1, 2, 33, 33, 8), seed=3, requires_grad=True)
    variants.create("linear", chunk_size=8)(q, k, v, causal=causal).square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_bad_chunk_size_names_field(value):
    with pytest.raises(VariantConfigError, match="linear: chunk_size"):
        variants.create("linear", chunk_size=value)


def test_flops_positive_and_linear_in_length():
    module = variants.create("linear")
    a = module.flops(1, 8, 4096, 4096, 64, False)
    b = module.flops(1, 8, 8192, 8192, 64, False)
    assert b == 2 * a
    assert module.flops(1, 8, 4096, 4096, 64, True) > 0
