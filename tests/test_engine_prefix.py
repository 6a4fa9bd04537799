"""The streamed causal prefix sums (variants.engines.prefix) against their plain references
(variants.engines.prefix_naive): every path across chunks, values and gradients, in float64."""

import pytest
import torch
from helpers import assert_close

from harness.conformance import make_qkv
from variants.engines import prefix_naive as naive
from variants.engines import prefix_stream
from variants.engines.prefix import FeatureMaps, causal_linear_attention
from variants.engines.prefix_costs import CHUNKS, DEVICE_GROUPS, GROUPS

# Tiny shapes gain nothing from threads; on a shared box threads only wait on each other.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("lengths", [(37, 37), (23, 71), (1, 9)])
def test_the_two_naive_forms_agree(lengths):
    # the masked quadratic form and the running sums compute one function
    nq, nk = lengths
    gen = torch.Generator().manual_seed(0)
    phi_q = torch.rand(2, 3, nq, 6, generator=gen, dtype=torch.float64)
    phi_k = torch.rand(2, 3, nk, 6, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 3, nk, 5, generator=gen, dtype=torch.float64)
    want = naive.quadratic_form(phi_q, phi_k, v, causal=True)
    assert_close(naive.cumsum_form(phi_q, phi_k, v), want, rtol=1e-12, atol=1e-13)


#: Features given directly: the prefix sums' maps are the identity.
IDENTITY = FeatureMaps(query=lambda x: x, key=lambda x: x)


def _project_logits(x, w):
    """A log map (logits of positive key features), like Performer's ``W k - |k|^2 / 2``."""
    return x @ w - 0.5 * x.square().sum(-1, keepdim=True)


LOG_MAPS = FeatureMaps(query=lambda x, w: torch.softmax(x @ w, -1), key=_project_logits,
                       key_is_log=True)  # fmt: skip


#: The three ways across chunks: streamed with every state formed by adds (small states) or
#: scanned chunk by chunk (the CPU's), or batched by one product and one cumsum (GPUs').
PATHS = ["adds", "scan", "batched"]


def use_path(monkeypatch, path, group_elements=None):
    """Makes the CPU take ``path``, by default with groups of ``group_elements`` query
    elements."""
    if group_elements is not None:
        monkeypatch.setattr(prefix_stream, "GROUP_ELEMENTS", group_elements)
        monkeypatch.setattr(prefix_stream, "DEVICE_GROUP_ELEMENTS", group_elements)
    monkeypatch.setattr(prefix_stream, "SMALL_STATE", 1 << 30 if path == "adds" else 0)
    if path == "batched":
        monkeypatch.setattr(prefix_stream, "STREAMED_DEVICES", frozenset())


@pytest.mark.parametrize("chunk", sorted({1, 5, 16, 500, *CHUNKS}))  # the tuner's candidates
@pytest.mark.parametrize("lengths", [(64, 64), (37, 37), (23, 71)])
# one chunk per group, or one group (every candidate group of the tuner at these shapes)
@pytest.mark.parametrize("group_elements", [1, *GROUPS, *DEVICE_GROUPS])
@pytest.mark.parametrize("path", PATHS)
def test_chunked_prefix_sums_equal_masked_quadratic(
    chunk, lengths, group_elements, path, monkeypatch
):
    use_path(monkeypatch, path)
    nq, nk = lengths
    gen = torch.Generator().manual_seed(1)
    phi_q = torch.rand(2, 2, nq, 6, generator=gen, dtype=torch.float64)
    phi_k = torch.rand(2, 2, nk, 6, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 2, nk, 5, generator=gen, dtype=torch.float64)
    out = causal_linear_attention(phi_q, phi_k, v, IDENTITY, chunk, group=group_elements)
    assert_close(out, naive.quadratic_form(phi_q, phi_k, v, True), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk, group_elements", [(4, 1), (4, 600), (7, 2**18), (64, 2**18)])
@pytest.mark.parametrize("lengths", [(29, 29), (19, 42)])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("path", PATHS)
def test_streamed_gradients_equal_autograd_of_the_quadratic_form(
    chunk, group_elements, lengths, log, path, monkeypatch
):
    # the streamed backward (own formulas, features recomputed per group, running key max)
    # against autograd through the naive O(n^2) form, parameters of the maps included
    use_path(monkeypatch, path, group_elements)
    nq, nk = lengths
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 3, n, 4, generator=gen, dtype=torch.float64) for n in (nq, nk, nk))
    k = k * torch.linspace(0.2, 3.0, nk, dtype=torch.float64)[:, None]  # the key max grows
    w = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    grad = torch.randn(2, 3, nq, 4, generator=gen, dtype=torch.float64)
    maps = LOG_MAPS if log else FeatureMaps(query=lambda x, w: torch.exp(x @ w),
                                            key=lambda x, w: torch.exp(x @ w))  # fmt: skip
    leaves = [t.clone().requires_grad_() for t in (q, k, v, w)]
    out = causal_linear_attention(*leaves[:3], maps, chunk, (leaves[3],))
    got = torch.autograd.grad(out, leaves, grad)
    refs = [t.clone().requires_grad_() for t in (q, k, v, w)]
    ref = naive.causal_linear_attention(*refs[:3], maps, (refs[3],))
    assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for g, r in zip(got, torch.autograd.grad(ref, refs, grad)):
        assert_close(g, r, rtol=1e-9, atol=1e-11)


def test_streamed_backward_can_run_twice_and_leaves_inputs_alone():
    q, k, v = make_qkv((1, 2, 40, 40, 8), seed=8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    before = [t.detach().clone() for t in (q, k, v, w)]
    out = causal_linear_attention(q, k, v, LOG_MAPS, 6, (w,))
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, (q, k, v, w), grad, retain_graph=True)
    second = torch.autograd.grad(out, (q, k, v, w), grad)  # the timer's bwd pass does this
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    for t, b in zip((q, k, v, w), before):
        assert torch.equal(t.detach(), b)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("group", [*GROUPS, *DEVICE_GROUPS])
@pytest.mark.parametrize("path", PATHS)
def test_every_candidate_chunk_and_group_match_autograd_of_the_quadratic_form(
    chunk, group, path, monkeypatch
):
    # the tuner's candidates at a shape where they matter: d = 64 puts 1, 2 and 5 chunks of
    # 128 in the streamed groups, several groups and a ragged tail (values and gradients)
    use_path(monkeypatch, path)
    nq, nk = 700, 741
    gen = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(2, 3, n, 64, generator=gen, dtype=torch.float64) for n in (nq, nk, nk))
    w = 0.2 * torch.randn(64, 6, generator=gen, dtype=torch.float64)
    grad = torch.randn(2, 3, nq, 64, generator=gen, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, w)]
    out = causal_linear_attention(*leaves[:3], LOG_MAPS, chunk, (leaves[3],), group)
    refs = [t.clone().requires_grad_() for t in (q, k, v, w)]
    ref = naive.causal_linear_attention(*refs[:3], LOG_MAPS, (refs[3],))
    assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for g, r in zip(torch.autograd.grad(out, leaves, grad), torch.autograd.grad(ref, refs, grad)):
        assert_close(g, r, rtol=1e-9, atol=1e-11)
