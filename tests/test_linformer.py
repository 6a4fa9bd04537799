"""Linformer: identity projections at k = kv_len are exact; slicing, sharing, validation."""

import pytest
import torch

import variants
from harness.conformance import make_qkv
from harness.measure.reference import reference_attention
from variants.base import VariantConfigError

# Tiny shapes gain nothing from threads; on a shared box threads only wait on each other.
pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


def manual_linformer(q, k, v, proj_k, proj_v):
    """softmax(q (E k)^T / sqrt(d)) (F v) in float64, written out."""
    k_proj = torch.einsum("kn,bhnd->bhkd", proj_k.double(), k.double())
    v_proj = torch.einsum("kn,bhnd->bhkd", proj_v.double(), v.double())
    scores = q.double() @ k_proj.transpose(-2, -1) / q.shape[-1] ** 0.5
    return torch.softmax(scores, dim=-1) @ v_proj


@pytest.mark.parametrize("q_len", [48, 21])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_identity_projection_at_full_k_is_exact(q_len, dtype, tol):
    q, k, v = make_qkv((2, 3, q_len, 48, 16), seed=0, dtype=dtype)
    module = variants.create("linformer", kv_len=48, k=48, init="identity")
    assert rel_err(module(q, k, v), reference_attention(q, k, v)) < tol


@pytest.mark.parametrize("share_kv", [False, True])
def test_shorter_sequence_slices_projection(share_kv):
    module = variants.create("linformer", kv_len=40, k=12, share_kv=share_kv, seed=3)
    q, k, v = make_qkv((1, 2, 25, 25, 8), seed=1, dtype=torch.float64)
    proj_v = module.proj_k if share_kv else module.proj_v
    ref = manual_linformer(q, k, v, module.proj_k[:, :25], proj_v[:, :25])
    assert rel_err(module(q, k, v), ref) < 1e-12


def test_longer_sequence_unsupported_with_reason():
    module = variants.create("linformer", kv_len=16, k=8)
    q, k, v = make_qkv((1, 1, 20, 20, 4), seed=2)
    reasons = module.not_supported_reasons(q, k, v, False)
    assert reasons and "kv_len=20 exceeds the kv_len=16" in reasons[0]
    with pytest.raises(ValueError, match="kv_len=20 exceeds the kv_len=16"):
        module(q, k, v)
    assert module.not_supported_reasons(q, k, v, True)  # causal: unsupported too


def test_gaussian_projection_is_jl_scaled_and_seeded():
    a = variants.create("linformer", kv_len=512, k=64, seed=1)
    b = variants.create("linformer", kv_len=512, k=64, seed=1)
    assert torch.equal(a.proj_k, b.proj_k)
    assert abs(a.proj_k.var().item() * 64 - 1) < 0.05
    assert not list(a.parameters()), "gaussian projections are fixed buffers"


def test_learned_projections_are_trainable():
    module = variants.create("linformer", kv_len=32, k=8, init="learned")
    assert {n for n, _ in module.named_parameters()} == {"proj_k", "proj_v"}
    q, k, v = make_qkv((1, 2, 32, 32, 8), seed=4)
    module(q, k, v).square().sum().backward()
    assert module.proj_k.grad is not None and torch.isfinite(module.proj_k.grad).all()


def effective_matrix(module, q, k):
    """The ``(B, H, Nq, Nk)`` matrix the module applies to V (it is linear in V: feed V = I)."""
    b, h, nk = k.shape[0], k.shape[1], k.shape[-2]
    eye = torch.eye(nk, dtype=k.dtype).expand(b, h, nk, nk)
    return module(q, k, eye)


@pytest.mark.parametrize("share_kv", [False, True])
@pytest.mark.parametrize("nk, built", [(64, 64), (50, 64), (37, 37)])
def test_mean_pool_rows_are_distributions(nk, built, share_kv):
    q, k, v = make_qkv((2, 2, 29, nk, 8), seed=6, dtype=torch.float64)
    module = variants.create("linformer", kv_len=built, k=12, init="mean_pool", share_kv=share_kv)
    assert not list(module.parameters()), "mean_pool is training-free (fixed buffers)"
    attn = effective_matrix(module, q, k)  # (B, H, Nq, Nk)
    assert (attn >= 0).all()
    assert (attn.sum(-1) - 1).abs().max().item() < 1e-12
    # each projected key is the mean of a contiguous segment (boundaries floor(i n / k))
    bounds = [i * nk // 12 for i in range(13)]
    means = torch.stack([k[..., a:b, :].mean(-2) for a, b in zip(bounds, bounds[1:])], -2)
    scores = q @ means.transpose(-2, -1) / 8**0.5
    vmeans = torch.stack([v[..., a:b, :].mean(-2) for a, b in zip(bounds, bounds[1:])], -2)
    assert rel_err(module(q, k, v), torch.softmax(scores, -1) @ vmeans) < 1e-12


def test_random_projection_rows_are_not_distributions():
    # why mean_pool is the fair untrained Linformer: Gaussian E, F give rows summing anywhere
    q, k, _ = make_qkv((1, 2, 32, 64, 8), seed=7, dtype=torch.float64)
    attn = effective_matrix(variants.create("linformer", kv_len=64, k=8), q, k)
    assert (attn.sum(-1) - 1).abs().mean().item() > 0.1
    assert (attn < 0).any()


@pytest.mark.parametrize("q_len", [48, 21])
def test_mean_pool_at_full_k_is_exact(q_len):
    q, k, v = make_qkv((2, 3, q_len, 48, 16), seed=8, dtype=torch.float64)
    module = variants.create("linformer", kv_len=48, k=48, init="mean_pool")
    assert rel_err(module(q, k, v), reference_attention(q, k, v)) < 1e-12


def test_mean_pool_shorter_than_k_uses_one_key_per_segment():
    q, k, v = make_qkv((1, 2, 10, 10, 8), seed=9, dtype=torch.float64)
    module = variants.create("linformer", kv_len=64, k=32, init="mean_pool")
    assert rel_err(module(q, k, v), reference_attention(q, k, v)) < 1e-12


def test_default_k_fits_kv_len():
    assert variants.create("linformer", kv_len=4096).k == 256
    assert variants.create("linformer", kv_len=100).k == 100


def test_gradients_finite():
    q, k, v = make_qkv((1, 2, 33, 33, 8), seed=5, requires_grad=True)
    variants.create("linformer", kv_len=33, k=8)(q, k, v).square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()


@pytest.mark.parametrize(
    "params, match",
    [
        ({"k": 600, "kv_len": 512}, "linformer: k=600 exceeds kv_len=512"),
        ({"k": 0, "kv_len": 512}, "linformer: k=0"),
        ({"init": "uniform", "kv_len": 512}, "linformer: init='uniform'"),
        ({"init": "identity", "k": 64, "kv_len": 512}, "linformer: init='identity' needs"),
        ({"share_kv": "yes", "kv_len": 512}, "linformer: share_kv"),
        ({"k": 8}, "linformer: kv_len is required"),
    ],
)
def test_bad_params_name_field(params, match):
    with pytest.raises(VariantConfigError, match=match):
        variants.create("linformer", **params)


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_grouped_heads_project_each_kv_head_once(kv_heads):
    q, k, v = make_qkv((2, 4, 21, 48, 16), seed=4, dtype=torch.float64, kv_heads=kv_heads)
    module = variants.create("linformer", kv_len=48, k=12)
    kr, vr = (x.repeat_interleave(4 // kv_heads, dim=1) for x in (k, v))
    ref = manual_linformer(q, kr, vr, module.proj_k, module.proj_v)
    assert rel_err(module(q, k, v), ref) < 1e-12
    whole, grouped = (module.flops(2, 4, 21, 48, 16, False, kv_heads=h) for h in (4, kv_heads))
    assert grouped < whole  # the projections per KV head
