"""BigBird block-sparse attention: output vs a float64 reference masked by its own effective
mask, the mask's structure, seeding, gradients and validation (the conformance kit runs in
test_conformance.py)."""

import pytest
import torch

import variants
from harness.conformance import make_qkv
from harness.measure.reference import reference_attention
from variants.base import VariantConfigError
from variants.bigbird import BigBirdAttention
from variants.engines.blocksparse_naive import masked_attention


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [64, 67, 5])
@pytest.mark.parametrize("num_global_blocks", [0, 1])
def test_matches_reference_with_effective_mask(causal, n, num_global_blocks):
    module = BigBirdAttention(
        block_size=8, num_random_blocks=2, num_global_blocks=num_global_blocks
    )
    q, k, v = make_qkv((2, 2, n, n, 16), seed=n, dtype=torch.float64)
    mask = module.effective_mask(n, causal)
    ref = reference_attention(q, k, v, causal=causal, mask=mask)
    torch.testing.assert_close(module(q, k, v, causal), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_mask_structure(causal):
    bs, n = 4, 64
    module = BigBirdAttention(block_size=bs, num_random_blocks=2, window_blocks=1, seed=3)
    blocks = module.effective_mask(n, causal)[::bs, ::bs].clone()  # one token per block
    nb = n // bs
    for qb in range(1, nb):
        assert blocks[qb, 0], "global block not visible"
        assert blocks[qb, qb] and blocks[qb, qb - 1], "window blocks missing"
        if not causal and qb + 1 < nb:
            assert blocks[qb, qb + 1]
        window = {qb - 1, qb} | (set() if causal else {qb + 1})
        extra = [kb for kb in range(1, nb) if blocks[qb, kb] and kb not in window]
        candidates = (qb - 2) if causal else (nb - 1 - len(window & set(range(1, nb))))
        assert len(extra) == min(2, max(candidates, 0)), f"block {qb}: random blocks {extra}"
        if causal:
            assert all(kb < qb for kb in extra)
    assert blocks[0].all() if not causal else blocks[0, 0]


def test_window_covering_everything_is_exact():
    module = BigBirdAttention(block_size=16, num_random_blocks=0, window_blocks=4)
    q, k, v = make_qkv((1, 2, 70, 70, 8), seed=1, dtype=torch.float64)
    torch.testing.assert_close(module(q, k, v), reference_attention(q, k, v), rtol=1e-10, atol=0)


def test_seeds():
    a, b = BigBirdAttention(block_size=4, seed=1), BigBirdAttention(block_size=4, seed=1)
    c = BigBirdAttention(block_size=4, seed=2)
    assert torch.equal(a.effective_mask(128), b.effective_mask(128))
    assert not torch.equal(a.effective_mask(128), c.effective_mask(128))
    q, k, v = make_qkv((1, 2, 128, 128, 8), seed=2)
    torch.testing.assert_close(a(q, k, v), b(q, k, v), rtol=0, atol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_match_masked_reference(causal):
    module = BigBirdAttention(block_size=8, num_random_blocks=1)
    n = 45
    q, k, v = make_qkv((1, 2, n, n, 8), seed=5, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(1, 2, n, 8, dtype=torch.float64)
    mask = module.effective_mask(n, causal)
    got = torch.autograd.grad(module(q, k, v, causal), (q, k, v), grad_out)
    ref = torch.autograd.grad(masked_attention(q, k, v, mask), (q, k, v), grad_out)
    for name, x, y in zip("qkv", got, ref):
        assert torch.isfinite(x).all(), f"d{name} not finite"
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9, msg=f"d{name} differs")


def test_cross_attention_unsupported():
    q, k, v = make_qkv((1, 1, 10, 20, 8))
    reasons = BigBirdAttention().not_supported_reasons(q, k, v, False)
    assert reasons and "self-attention" in reasons[-1]


@pytest.mark.parametrize(
    "params, field",
    [
        ({"block_size": 0}, "block_size"),
        ({"num_random_blocks": -1}, "num_random_blocks"),
        ({"window_blocks": -1}, "window_blocks"),
        ({"num_global_blocks": 3, "block_size": 64, "kv_len": 100}, "num_global_blocks"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_parameters_name_the_field(params, field):
    with pytest.raises(VariantConfigError, match=field):
        variants.create("bigbird", **params)
