"""Hedgehog attention against a float64 reference of its own formula, written out here.

The reference builds the feature map, the full kernel matrix and the bottom-right causal mask
directly (no prefix sums, no shared code with the variant), so the chunked causal path, the
cross-length alignment and the gradients (including ``W``'s) are checked independently.
"""

from __future__ import annotations

import pytest
import torch

import variants
from variants.base import VariantConfigError
from variants.hedgehog import HedgehogAttention


def _softmax_features(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """[softmax(W x), softmax(-W x)] per head, softmax spelled out with exp and a sum."""
    proj = torch.einsum("hfd,bhnd->bhnf", w, x)
    halves = []
    for p in (proj, -proj):
        e = torch.exp(p - p.amax(dim=-1, keepdim=True))
        halves.append(e / e.sum(dim=-1, keepdim=True))
    return torch.cat(halves, dim=-1)


def reference(q, k, v, w, causal):
    """float64 Hedgehog: normalised kernel ``phi(q) . phi(k)`` over the visible keys."""
    q, k, v, w = (t.double() for t in (q, k, v, w))
    scores = _softmax_features(q, w) @ _softmax_features(k, w).transpose(-2, -1)
    nq, nk = q.shape[-2], k.shape[-2]
    if causal:
        visible = torch.zeros(nq, nk, dtype=torch.bool)
        for i in range(nq):
            visible[i, : i + (nk - nq) + 1] = True  # bottom-right: the last query sees all
        scores = scores * visible
    return (scores / scores.sum(dim=-1, keepdim=True)) @ v


def _inputs(b, h, nq, nk, d, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(b, h, n, d, generator=gen, dtype=torch.float64).to(dtype) for n in (nq, nk, nk)
    )


def _random_w(module: HedgehogAttention, seed: int = 1) -> torch.Tensor:
    """Give the module a non-identity W (the formula, not just the initialisation, is tested)."""
    gen = torch.Generator().manual_seed(seed)
    h, d, _ = module.weight.shape
    w = torch.eye(d) + 0.5 * torch.randn(h, d, d, generator=gen)
    with torch.no_grad():
        module.weight.copy_(w)
    return module.weight.detach().clone()


@pytest.mark.parametrize(
    "nq, nk, causal",
    [(40, 40, False), (40, 40, True), (13, 50, False), (13, 50, True), (1, 9, True)],
)
@pytest.mark.parametrize("chunk_size", [7, 128])
def test_matches_reference(one_thread, nq, nk, causal, chunk_size) -> None:
    module = HedgehogAttention(heads=3, head_dim=8, chunk_size=chunk_size).double()
    w = _random_w(module)
    q, k, v = _inputs(2, 3, nq, nk, 8)
    with torch.no_grad():
        out = module(q, k, v, causal=causal)
    torch.testing.assert_close(out, reference(q, k, v, w, causal), rtol=1e-10, atol=1e-12)


def test_float32_matches_reference() -> None:
    module = HedgehogAttention(heads=2, head_dim=16)
    w = _random_w(module)
    q, k, v = _inputs(1, 2, 33, 70, 16, dtype=torch.float32)
    for causal in (False, True):
        with torch.no_grad():
            out = module(q, k, v, causal=causal).double()
        ref = reference(q, k, v, w, causal)
        assert ((out - ref).norm() / ref.norm()).item() < 1e-5


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_match_reference(one_thread, causal) -> None:
    module = HedgehogAttention(heads=2, head_dim=8, chunk_size=5).double()
    _random_w(module)
    w_ref = module.weight.detach().clone().requires_grad_(True)
    q, k, v = (t.requires_grad_(True) for t in _inputs(2, 2, 11, 19, 8, seed=3))
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    grad_out = torch.randn(2, 2, 11, 8, generator=torch.Generator().manual_seed(4)).double()
    module(q, k, v, causal=causal).backward(grad_out)
    reference(q2, k2, v2, w_ref, causal).backward(grad_out)
    for got, want in ((q.grad, q2.grad), (k.grad, k2.grad), (v.grad, v2.grad)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(module.weight.grad, w_ref.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_weights_are_what_multiplies_v(causal) -> None:
    module = HedgehogAttention(heads=2, head_dim=8).double()
    _random_w(module)
    q, k, v = _inputs(1, 2, 6, 10, 8, seed=5)
    with torch.no_grad():
        weights = module.attention_weights(q, k, causal=causal)
        out = module(q, k, v, causal=causal)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 6, dtype=torch.float64))
    torch.testing.assert_close(weights @ v, out)
    if causal:  # query 0 sees keys 0..4 (bottom-right: offset 10 - 6)
        assert (weights[..., 0, 5:] == 0).all() and (weights[..., 0, :5] > 0).all()


def test_identity_initialisation_is_the_fixed_softmax_kernel() -> None:
    module = variants.create("hedgehog", heads=2, head_dim=4)
    torch.testing.assert_close(module.weight.detach(), torch.eye(4).expand(2, 4, 4))
    assert module.trained is False and module.weight.requires_grad
    q, k, v = _inputs(1, 2, 5, 5, 4, dtype=torch.float32)
    kernel = q.softmax(-1) @ k.softmax(-1).transpose(-2, -1)
    kernel = kernel + (-q).softmax(-1) @ (-k).softmax(-1).transpose(-2, -1)
    expected = (kernel / kernel.sum(-1, keepdim=True)) @ v
    torch.testing.assert_close(module(q, k, v), expected)


def test_heads_built_at_first_call_then_fixed() -> None:
    module = variants.create("hedgehog", kv_len=64, head_dim=16)  # as the harness builds it
    assert module.weight is None and module.config()["heads"] is None
    q, k, v = _inputs(1, 3, 8, 8, 16, dtype=torch.float32)
    assert module.not_supported_reasons(q, k, v, False) == []
    module(q, k, v)
    assert tuple(module.weight.shape) == (3, 16, 16) and module.config()["heads"] == 3
    q4 = torch.zeros(1, 4, 8, 16)
    reasons = module.not_supported_reasons(q4, q4, q4, False)
    assert reasons and "heads=3" in reasons[0] and "heads=4" in reasons[0]
    with pytest.raises(ValueError, match="heads=4"):
        module(q4, q4, q4)


def test_saved_fit_loads_into_an_unbuilt_instance() -> None:
    fitted = HedgehogAttention(heads=2, head_dim=8)
    _random_w(fitted)
    fresh = HedgehogAttention()  # heads and head_dim unknown until the state arrives
    fresh.load_state_dict(fitted.state_dict())
    q, k, v = _inputs(1, 2, 9, 9, 8, dtype=torch.float32)
    torch.testing.assert_close(fresh(q, k, v, causal=True), fitted(q, k, v, causal=True))


def test_cost_models() -> None:
    module = HedgehogAttention(chunk_size=64)
    for causal in (False, True):
        flops = module.flops(2, 4, 512, 512, 32, causal)
        mem = module.analytic_mem_bytes(2, 4, 512, 512, 32, causal)
        assert isinstance(flops, int) and flops > 0 and isinstance(mem, int) and mem > 0
    # linear in the length (bidirectional): twice the tokens, twice the work
    flops = module.flops
    assert flops(1, 1, 2048, 2048, 32, False) == 2 * flops(1, 1, 1024, 1024, 32, False)
    assert module.backward_flops(1, 1, 64, 64, 32, False) == 2 * flops(1, 1, 64, 64, 32, False)


@pytest.mark.parametrize("field, value", [("heads", 0), ("heads", True), ("chunk_size", 0)])
def test_bad_parameters_name_the_field(field, value) -> None:
    with pytest.raises(VariantConfigError, match=f"hedgehog: {field}="):
        variants.create("hedgehog", **{field: value})
