"""Registry, exact baselines, multi-head layer and input validation."""

import pytest
import torch

import variants
from harness.conformance import make_qkv
from harness.measure.reference import reference_attention
from variants.base import VariantConfigError, causal_mask, check_qkv


def test_available_lists_builtins() -> None:
    names = variants.available()
    for name in (
        "full",
        "sdpa",
        "xformers",
        "longformer",
        "local",
        "linformer",
        "performer",
        "nystrom",
        "bigbird",
        "linear",
    ):
        assert name in names


def test_unknown_variant_lists_available() -> None:
    with pytest.raises(variants.UnknownVariantError) as info:
        variants.create("nope")
    msg = str(info.value)
    assert "nope" in msg and "full" in msg and "performer" in msg


def test_unknown_parameter_names_field_and_allowed() -> None:
    with pytest.raises(VariantConfigError, match="bogus.*allowed: backend"):
        variants.create("sdpa", bogus=1)


def test_bad_backend_names_allowed_values() -> None:
    with pytest.raises(VariantConfigError, match="backend='fast'.*auto, math, flash"):
        variants.create("sdpa", backend="fast")


@pytest.mark.parametrize("field,value", [("kv_len", 0), ("head_dim", -4), ("kv_len", 2.5)])
def test_sizes_must_be_positive(field: str, value) -> None:
    with pytest.raises(VariantConfigError, match=field):
        variants.create("full", **{field: value})


def test_check_qkv_head_dim_mismatch() -> None:
    q = torch.randn(1, 2, 8, 16)
    k = torch.randn(1, 2, 8, 32)
    with pytest.raises(ValueError, match="head_dim mismatch: q has 16, k has 32"):
        check_qkv(q, k, k)


def test_causal_mask_bottom_right() -> None:
    m = causal_mask(2, 4)
    # the last query sees every key; the first sees kv_len - q_len + 1 keys
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]


@pytest.mark.parametrize("backend", ["flash", "efficient", "cudnn"])
def test_sdpa_gpu_backends_unsupported_on_cpu(backend: str) -> None:
    v = variants.create("sdpa", backend=backend)
    q, k, val = make_qkv((1, 2, 16, 16, 8))
    reasons = v.not_supported_reasons(q, k, val, causal=False)
    assert reasons and "CUDA" in reasons[0] and backend in reasons[0]


@pytest.mark.parametrize("backend", ["auto", "math"])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_cpu_backends_exact(backend: str, causal: bool) -> None:
    q, k, v = make_qkv((2, 2, 33, 57, 16), seed=3)
    out = variants.create("sdpa", backend=backend)(q, k, v, causal=causal)
    ref = reference_attention(q, k, v, causal=causal)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


def test_xformers_unsupported_on_cpu_with_reason() -> None:
    v = variants.create("xformers")
    q, k, val = make_qkv((1, 2, 16, 16, 8))
    reasons = v.not_supported_reasons(q, k, val, causal=False)
    assert any("device cpu not supported" in r for r in reasons)


def test_full_scale_parameter() -> None:
    q, k, v = make_qkv((1, 2, 10, 10, 8), seed=1)
    out = variants.create("full", scale=0.5)(q, k, v)
    ref = reference_attention(q, k, v, scale=0.5)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-6


@pytest.mark.parametrize("kind", ["self", "causal", "cross"])
def test_multihead_matches_reference(kind: str) -> None:
    torch.manual_seed(0)
    mha = variants.MultiHeadAttention(d_model=32, num_heads=4, variant="full").double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    ctx = torch.randn(2, 13, 32, dtype=torch.float64) if kind == "cross" else None
    out = mha(x, context=ctx, causal=kind == "causal")
    src = x if ctx is None else ctx

    def heads(t):
        return t.view(2, -1, 4, 8).transpose(1, 2)

    q, k, v = heads(mha.w_q(x)), heads(mha.w_k(src)), heads(mha.w_v(src))
    ref = reference_attention(q, k, v, causal=kind == "causal")
    ref = mha.w_o(ref.transpose(1, 2).reshape(2, 9, 32))
    torch.testing.assert_close(out, ref)
    assert out.shape == (2, 9, 32)


def test_multihead_validates() -> None:
    with pytest.raises(ValueError, match="divisible"):
        variants.MultiHeadAttention(d_model=30, num_heads=4)
    mha = variants.MultiHeadAttention(d_model=32, num_heads=4, variant="sdpa")
    with pytest.raises(ValueError, match="x must be"):
        mha(torch.randn(2, 5, 16))
