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
from variants.engines.prefix_costs import CHUNKS
from variants.hedgehog import HedgehogAttention


def _softmax_features(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[softmax(W x + b), softmax(-(W x + b))] per head, softmax spelled out with exp and a sum."""
    proj = torch.einsum("hfd,bhnd->bhnf", w, x) + b[None, :, None, :]
    halves = []
    for p in (proj, -proj):
        e = torch.exp(p - p.amax(dim=-1, keepdim=True))
        halves.append(e / e.sum(dim=-1, keepdim=True))
    return torch.cat(halves, dim=-1)


def reference(q, k, v, w, causal, b=None):
    """float64 Hedgehog: normalised kernel ``phi(q) . phi(k)`` over the visible keys (``b``
    None: a zero bias)."""
    b = torch.zeros(w.shape[:2]) if b is None else b
    q, k, v, w, b = (t.double() for t in (q, k, v, w, b))
    scores = _softmax_features(q, w, b) @ _softmax_features(k, w, b).transpose(-2, -1)
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
    """Give the module a non-identity W and a non-zero bias (the formula, not just the
    initialisation, is tested); returns W."""
    gen = torch.Generator().manual_seed(seed)
    h, d, _ = module.weight.shape
    w = torch.eye(d) + 0.5 * torch.randn(h, d, d, generator=gen)
    with torch.no_grad():
        module.weight.copy_(w)
        module.bias.copy_(0.5 * torch.randn(h, d, generator=gen))
    return module.weight.detach().clone()


@pytest.mark.parametrize(
    "nq, nk, causal",
    [(40, 40, False), (40, 40, True), (13, 50, False), (13, 50, True), (1, 9, True),
     (290, 300, True)],
)  # fmt: skip
@pytest.mark.parametrize("chunk_size", [7, *CHUNKS])  # the tuner's candidates among them
def test_matches_reference(one_thread, nq, nk, causal, chunk_size) -> None:
    module = HedgehogAttention(heads=3, head_dim=8, chunk_size=chunk_size).double()
    w = _random_w(module)
    q, k, v = _inputs(2, 3, nq, nk, 8)
    with torch.no_grad():
        out = module(q, k, v, causal=causal)
    ref = reference(q, k, v, w, causal, module.bias.detach())
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_float32_matches_reference() -> None:
    module = HedgehogAttention(heads=2, head_dim=16)
    w = _random_w(module)
    q, k, v = _inputs(1, 2, 33, 70, 16, dtype=torch.float32)
    for causal in (False, True):
        with torch.no_grad():
            out = module(q, k, v, causal=causal).double()
        ref = reference(q, k, v, w, causal, module.bias.detach())
        assert ((out - ref).norm() / ref.norm()).item() < 1e-5


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "chunk_size, nq, nk", [(5, 11, 19), *((c, 200, 230) for c in CHUNKS)]
)  # the tuner's candidate chunks at lengths of several chunks
def test_gradients_match_reference(one_thread, causal, chunk_size, nq, nk) -> None:
    module = HedgehogAttention(heads=2, head_dim=8, chunk_size=chunk_size).double()
    _random_w(module)
    w_ref = module.weight.detach().clone().requires_grad_(True)
    b_ref = module.bias.detach().clone().requires_grad_(True)
    q, k, v = (t.requires_grad_(True) for t in _inputs(2, 2, nq, nk, 8, seed=3))
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    grad_out = torch.randn(2, 2, nq, 8, generator=torch.Generator().manual_seed(4)).double()
    module(q, k, v, causal=causal).backward(grad_out)
    reference(q2, k2, v2, w_ref, causal, b_ref).backward(grad_out)
    for got, want in ((q.grad, q2.grad), (k.grad, k2.grad), (v.grad, v2.grad)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(module.weight.grad, w_ref.grad, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(module.bias.grad, b_ref.grad, rtol=1e-9, atol=1e-11)
    assert float(module.bias.grad.abs().max()) > 0


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
    torch.testing.assert_close(module.bias.detach(), torch.zeros(2, 4))
    assert module.trained is False and module.weight.requires_grad
    q, k, v = _inputs(1, 2, 5, 5, 4, dtype=torch.float32)
    kernel = q.softmax(-1) @ k.softmax(-1).transpose(-2, -1)
    kernel = kernel + (-q).softmax(-1) @ (-k).softmax(-1).transpose(-2, -1)
    expected = (kernel / kernel.sum(-1, keepdim=True)) @ v
    torch.testing.assert_close(module(q, k, v), expected)


@pytest.mark.parametrize("causal", [False, True])
def test_the_feature_map_has_a_bias_that_trains(causal) -> None:
    """The paper's feature map is a linear layer with a bias: ``b`` is a parameter of its own,
    one per head and feature, zero at first, moved by a gradient step."""
    module = HedgehogAttention(heads=2, head_dim=4)
    names = {name: tuple(p.shape) for name, p in module.named_parameters()}
    assert names == {"weight": (2, 4, 4), "bias": (2, 4)}
    q, k, v = _inputs(1, 2, 6, 6, 4, seed=7, dtype=torch.float32)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    target = torch.zeros(1, 2, 6, 4)
    (module(q, k, v, causal=causal) - target).pow(2).sum().backward()
    optimizer.step()
    assert float(module.bias.detach().abs().min()) > 0  # every entry moved
    # and it is part of the map: the same W with another bias gives other features
    moved = module.features(q)
    with torch.no_grad():
        module.bias.zero_()
    assert not torch.allclose(moved, module.features(q))


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
    torch.testing.assert_close(fresh.bias, fitted.bias)
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
