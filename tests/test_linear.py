"""Linear attention (elu + 1) and the chunked causal prefix sums of variants._prefix."""

import pytest
import torch
import torch.nn.functional as F

import variants
from harness.conformance import make_qkv
from harness.measure.reference import reference_mask
from variants import _prefix
from variants._prefix import FeatureMaps, causal_linear_attention
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


#: Features given directly: the prefix sums' maps are the identity.
IDENTITY = FeatureMaps(query=lambda x: x, key=lambda x: x)


def _project_logits(x, w):
    """A log map (logits of positive key features), like Performer's ``W k - |k|^2 / 2``."""
    return x @ w - 0.5 * x.square().sum(-1, keepdim=True)


LOG_MAPS = FeatureMaps(query=lambda x, w: torch.softmax(x @ w, -1), key=_project_logits,
                       key_is_log=True)  # fmt: skip


def masked_quadratic(phi_q, phi_k, v):
    """The normalised causal kernel attention, written out: O(n^2), one global key shift."""
    weights = (phi_q @ phi_k.transpose(-2, -1)) * reference_mask(phi_q.shape[-2], phi_k.shape[-2])
    return (weights @ v) / weights.sum(-1, keepdim=True)


#: The three ways across chunks: streamed with every state formed by adds (small states) or
#: scanned chunk by chunk (the CPU's), or batched by one product and one cumsum (GPUs').
PATHS = ["adds", "scan", "batched"]


def use_path(monkeypatch, path, group_elements):
    """Makes the CPU take ``path`` with groups of ``group_elements`` query elements."""
    monkeypatch.setattr(_prefix, "GROUP_ELEMENTS", group_elements)
    monkeypatch.setattr(_prefix, "DEVICE_GROUP_ELEMENTS", group_elements)
    monkeypatch.setattr(_prefix, "SMALL_STATE", 1 << 30 if path == "adds" else 0)
    if path == "batched":
        monkeypatch.setattr(_prefix, "STREAMED_DEVICES", frozenset())


@pytest.mark.parametrize("chunk", [1, 5, 16, 64, 500])
@pytest.mark.parametrize("lengths", [(64, 64), (37, 37), (23, 71)])
@pytest.mark.parametrize("group_elements", [1, 2**18])  # one chunk per group, or one group
@pytest.mark.parametrize("path", PATHS)
def test_chunked_prefix_sums_equal_masked_quadratic(
    chunk, lengths, group_elements, path, monkeypatch
):
    use_path(monkeypatch, path, group_elements)
    nq, nk = lengths
    gen = torch.Generator().manual_seed(1)
    phi_q = torch.rand(2, 2, nq, 6, generator=gen, dtype=torch.float64)
    phi_k = torch.rand(2, 2, nk, 6, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 2, nk, 5, generator=gen, dtype=torch.float64)
    out = causal_linear_attention(phi_q, phi_k, v, IDENTITY, chunk)
    assert_close(out, masked_quadratic(phi_q, phi_k, v), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk, group_elements", [(4, 1), (4, 600), (7, 2**18), (64, 2**18)])
@pytest.mark.parametrize("lengths", [(29, 29), (19, 42)])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("path", PATHS)
def test_streamed_gradients_equal_autograd_of_the_quadratic_form(
    chunk, group_elements, lengths, log, path, monkeypatch
):
    # the streamed backward (own formulas, features recomputed per group, running key max)
    # against autograd through the O(n^2) form, parameters of the maps included
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
    phi_k = maps.key(refs[1], refs[3])
    if log:
        phi_k = (phi_k - phi_k.detach().amax(dim=(-2, -1), keepdim=True)).exp()
    ref = masked_quadratic(maps.query(refs[0], refs[3]), phi_k, refs[2])
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


@pytest.mark.parametrize(
    "name, params",
    [
        ("linear", {}),
        ("performer", {"nb_features": 64, "head_dim": 32}),
        ("hedgehog", {"heads": 4}),
    ],
)
def test_causal_memory_models_cover_the_measured_peaks(name, params):
    from harness.measure import memory, timing

    module = variants.create(name, **params)
    shape = (1, 4, 1024, 1024, 32)
    q, k, v = make_qkv(shape, seed=0)
    for pass_name in ("fwd", "fwd_bwd"):
        fn = timing.pass_callable(pass_name, module, q, k, v, True, torch.randn_like(q))
        fn()  # warm-up (lazy state), as the harness does
        peak = memory.peak_memory(fn, "cpu")["peak_mem_bytes"]
        if pass_name == "fwd":
            assert peak <= module.analytic_mem_bytes(*shape, True)
        else:  # the gradients of q, k, v are the harness's to count
            assert peak - 3 * q.numel() * 4 <= module.backward_mem_bytes(*shape, True)
