"""Performer (FAVOR+): unbiased kernel estimate, error vs nb_features, causal prefix sums."""

import math

import numpy as np
import pytest
import torch
from helpers import assert_close

import variants
from harness.conformance import make_qkv
from harness.measure.reference import reference_attention
from variants.base import VariantConfigError
from variants.engines.prefix_costs import CHUNKS
from variants.engines.prefix_naive import quadratic_form
from variants.performer_features import orthogonal_gaussian_projection, softmax_kernel_features

# Tiny shapes gain nothing from threads; on a shared box threads only wait on each other.
pytestmark = pytest.mark.usefixtures("one_thread")


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
@pytest.mark.parametrize("chunk", [1, 8, *CHUNKS])  # the tuner's candidates among them
@pytest.mark.parametrize("lengths", [(45, 45), (17, 40), (270, 300)])
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


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize(
    "chunk, lengths",
    [(8, (45, 45)), (5, (17, 40)), (64, (30, 30)), *((c, (260, 290)) for c in CHUNKS)],
)
def test_causal_gradients_match_autograd_of_the_quadratic_form(kernel, chunk, lengths):
    # the streamed backward (features recomputed group by group) against autograd through
    # the O(n^2) form of module.features, the learnable rows' gradient included
    nq, nk = lengths
    q, k, v = make_qkv((2, 2, nq, nk, 8), seed=11, dtype=torch.float64)
    params = {"nb_features": 24, "kernel": kernel, "chunk_size": chunk, "seed": 2}
    module = variants.create("performer", head_dim=8, learnable_projection=True, **params)
    module = module.double()
    grad = torch.randn(2, 2, nq, 8, generator=torch.Generator().manual_seed(3)).double()
    got, want = [], []
    for streamed in (True, False):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        module.zero_grad()
        if streamed:
            out = module(*leaves, causal=True)
        else:
            out = quadratic_form(*module.features(*leaves[:2]), leaves[2], True)
        out.backward(grad)
        (got if streamed else want).extend([*(t.grad for t in leaves), module.projection.grad])
    for a, b in zip(got, want):
        assert_close(a, b, 1e-9, 1e-11)


def performer_pytorch_features(data, projection, is_query, eps):
    """``softmax_kernel`` of performer-pytorch (lucidrains), transcribed: max of W x, then eps."""
    normalizer = data.shape[-1] ** -0.25
    dash = (normalizer * data) @ projection.to(data.dtype).T  # (B, H, N, m)
    diag = (data**2).sum(-1, keepdim=True) / 2.0 * normalizer**2
    shift = dash.amax(dim=-1 if is_query else (-1, -2), keepdim=True).detach()
    return projection.shape[0] ** -0.5 * (torch.exp(dash - diag - shift) + eps)


def performer_pytorch_attention(q, k, v, projection, eps):
    phi_q = performer_pytorch_features(q, projection, True, eps)
    phi_k = performer_pytorch_features(k, projection, False, eps)
    return (phi_q @ (phi_k.transpose(-2, -1) @ v)) / (phi_q @ phi_k.sum(-2).unsqueeze(-1))


def features_before_eps(x, projection, stabilize):
    """``softmax_kernel_features`` as it was before ``eps`` existed (max of the logits)."""
    m = projection.shape[0]
    x_aug = torch.cat([x, x.pow(2).sum(dim=-1, keepdim=True)], dim=-1)
    w_aug = torch.cat([projection, projection.new_full((m, 1), -0.5)], dim=-1).T
    logits = x_aug @ w_aug
    dims = -1 if stabilize == "row" else (-2, -1)
    shift = logits.detach().amax(dim=dims, keepdim=True)
    return logits.sub_(shift + 0.5 * math.log(m)).exp_()


def diffuse_qkv(seed):
    """Unit Gaussian q, k, v at n=512, d=64: near-uniform attention (issue 13)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 1, 512, 64, generator=gen) for _ in range(3)]


def test_eps_zero_is_the_unbiased_code_and_matches_performer_pytorch():
    q, k, v = diffuse_qkv(0)
    module = variants.create("performer", head_dim=64, nb_features=256, seed=0)
    assert module.eps == 0.0
    w, root = module.projection, 64**-0.25
    # the features are those of the code before eps, bit for bit
    phi_q, phi_k = module.features(q, k)
    assert torch.equal(phi_q, features_before_eps(q * root, w, "row"))
    assert torch.equal(phi_k, features_before_eps(k * root, w, "global"))
    # and the same random rows in performer-pytorch's formula with eps=0 agree to 1e-7
    q, k, v = (t.double() for t in (q, k, v))
    ours, theirs = module(q, k, v), performer_pytorch_attention(q, k, v, w.double(), 0.0)
    assert ((ours - theirs).norm() / theirs.norm()).item() < 1e-7


def test_eps_follows_performer_pytorch_and_helps_on_diffuse_inputs():
    q, k, v = diffuse_qkv(1)
    ref = reference_attention(q.double(), k.double(), v.double())
    errors = {}
    for eps in (0.0, 1e-4):
        module = variants.create("performer", head_dim=64, nb_features=256, eps=eps, seed=1)
        out = module(q, k, v)
        errors[eps] = ((out.double() - ref).norm() / ref.norm()).item()
        dq, dk, dv = (t.double() for t in (q, k, v))
        theirs = performer_pytorch_attention(dq, dk, dv, module.projection.double(), eps)
        assert ((module(dq, dk, dv) - theirs).norm() / theirs.norm()).item() < 1e-7
    # issue 13 measured 3.45 (unbiased) against 0.80 (eps=1e-4) on such inputs
    assert errors[1e-4] < 1.0 < 2.5 < errors[0.0], errors


def test_eps_with_causal_is_unsupported_because_the_key_shift_sees_the_future():
    q, k, v = make_qkv((1, 2, 40, 40, 8), seed=9, dtype=torch.float64)
    w = variants.create("performer", head_dim=8, nb_features=16).projection.double()
    k2 = k.clone()
    k2[..., 30:, :] *= 3  # keys no query before 30 may see
    # performer-pytorch's features: the global key max moves, and with eps the past moves too
    past = [
        quadratic_form(
            performer_pytorch_features(q, w, True, 1e-4),
            performer_pytorch_features(keys, w, False, 1e-4),
            v,
            True,
        )[..., :30, :]
        for keys in (k, k2)
    ]
    assert (past[0] - past[1]).abs().max() > 1e-3
    module = variants.create("performer", head_dim=8, nb_features=16, eps=1e-4)
    reasons = module.not_supported_reasons(q, k, v, True)
    assert reasons and "eps=0.0001 with causal attention is not supported" in reasons[0]
    assert not module.not_supported_reasons(q, k, v, False)
    with pytest.raises(ValueError, match="use eps=0 for causal"):
        module(q, k, v, causal=True)


def test_learnable_projection_is_the_seeded_draw_and_trains():
    fixed = variants.create("performer", head_dim=8, nb_features=12, seed=4)
    module = variants.create(
        "performer", head_dim=8, nb_features=12, seed=4, learnable_projection=True
    )
    assert [n for n, _ in module.named_parameters()] == ["projection"]
    assert not list(fixed.parameters()) and "projection" in dict(fixed.named_buffers())
    assert torch.equal(module.projection.detach(), fixed.projection)
    assert module.trained is False
    q, k, v = make_qkv((1, 2, 24, 24, 8), seed=10)
    assert torch.equal(module(q, k, v), fixed(q, k, v))
    for causal in (False, True):
        module.zero_grad()
        module(q, k, v, causal=causal).square().sum().backward()
        grad = module.projection.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    before = module.projection.detach().clone()
    torch.optim.SGD(module.parameters(), lr=0.1).step()
    assert not torch.equal(module.projection.detach(), before)
    with pytest.raises(VariantConfigError, match="learnable_projection=True needs head_dim"):
        variants.create("performer", learnable_projection=True)  # nothing to draw rows for


@pytest.mark.parametrize(
    "params, field",
    [
        ({"eps": -1e-4}, "eps"),
        ({"eps": "small"}, "eps"),
        ({"eps": 1e-4, "kernel": "relu"}, "eps"),
        ({"learnable_projection": "yes"}, "learnable_projection"),
        ({"learnable_projection": True, "redraw": "every_call"}, "learnable_projection"),
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


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [2, 1])
def test_grouped_heads_equal_the_quadratic_form_with_keys_repeated(kv_heads, causal, kernel):
    q, k, v = make_qkv((2, 4, 30, 41, 8), seed=5, dtype=torch.float64, kv_heads=kv_heads)
    module = variants.create("performer", head_dim=8, nb_features=24, kernel=kernel, chunk_size=8)
    kr, vr = (x.repeat_interleave(4 // kv_heads, dim=1) for x in (k, v))
    ref = quadratic_form(*module.features(q, kr), vr, causal)
    assert_close(module(q, k, v, causal=causal), ref, 1e-9, 1e-11)
