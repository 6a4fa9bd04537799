"""Linear attention (elu + 1) against its quadratic form; the prefix sums engine it runs on is
tested in test_engine_prefix.py."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close

import variants
from harness.conformance import make_qkv
from variants.base import VariantConfigError
from variants.engines.prefix_costs import CHUNKS, GROUPS
from variants.engines.prefix_naive import quadratic_form

# Tiny shapes gain nothing from threads; on a shared box threads only wait on each other.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("chunk", [16, *CHUNKS])  # the tuner's candidates among them
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "shape", [(2, 3, 45, 45, 8), (1, 2, 19, 50, 8), (1, 1, 1, 7, 4), (1, 2, 290, 300, 8)]
)
def test_equals_its_quadratic_form(shape, causal, chunk):
    q, k, v = make_qkv(shape, seed=0, dtype=torch.float64)
    out = variants.create("linear", chunk_size=chunk)(q, k, v, causal=causal)
    ref = quadratic_form(F.elu(q) + 1, F.elu(k) + 1, v, causal)
    assert_close(out, ref, rtol=1e-10, atol=1e-12)


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


@pytest.mark.parametrize(  # the tuner's candidate chunks and groups among them
    "knobs",
    [{}, *({"chunk_size": c} for c in CHUNKS), *({"group_elements": g} for g in GROUPS)],
)
@pytest.mark.parametrize(
    "name, params",
    [
        ("linear", {}),
        ("performer", {"nb_features": 64, "head_dim": 32}),
        ("hedgehog", {"heads": 4}),
    ],
)
def test_causal_memory_models_cover_the_measured_peaks(name, params, knobs):
    from harness.measure import memory, timing

    module = variants.create(name, **params, **knobs)
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


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [2, 1])
def test_grouped_heads_equal_the_quadratic_form_with_keys_repeated(kv_heads, causal):
    q, k, v = make_qkv((2, 4, 30, 41, 8), seed=5, dtype=torch.float64, kv_heads=kv_heads)
    out = variants.create("linear", chunk_size=8)(q, k, v, causal=causal)
    kr, vr = (x.repeat_interleave(4 // kv_heads, dim=1) for x in (k, v))
    assert_close(out, quadratic_form(F.elu(q) + 1, F.elu(kr) + 1, vr, causal), 1e-10, 1e-12)
