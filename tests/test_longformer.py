"""Longformer / local sliding-window attention: every backend that runs here vs a float64 dense
masked reference, limits, gradients and validation; the band engine (variants.engines.band) vs
its naive reference through the chunked backend (the conformance kit runs in
test_conformance.py)."""

import itertools
import os

import pytest
import torch

import variants
from harness.conformance import make_qkv
from harness.measure.reference import reference_attention
from variants.base import VariantConfigError
from variants.engines.band_naive import band_attention
from variants.longformer import LocalAttention, LongformerAttention, longformer_mask

CPU_BACKENDS = ["chunked", "dense_mask", "auto"]


def expected_mask(nq: int, nk: int, window: int, num_global: int, causal: bool) -> torch.Tensor:
    """The documented pattern, written independently of the implementation (bottom-right)."""
    mask = torch.zeros(nq, nk, dtype=torch.bool)
    for i in range(nq):
        pos = i + nk - nq
        for j in range(nk):
            in_band = pos - window <= j <= (pos if causal else pos + window)
            ok = in_band or j < num_global or i < num_global
            mask[i, j] = ok and (j <= pos or not causal)
    return mask


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(9, 9), (5, 12), (12, 7)])
def test_mask_matches_definition(shape, causal):
    for window, num_global in itertools.product([0, 2, 20], [0, 3]):
        got = longformer_mask(*shape, window, num_global, causal)
        assert torch.equal(got, expected_mask(*shape, window, num_global, causal))


# (q_len, kv_len): multiples of the block size (16 for small windows) and not, cross lengths
SHAPES = [(64, 64), (67, 67), (1, 1), (37, 83), (83, 70), (128, 128), (301, 301), (90, 333)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("num_global", [0, 3])
@pytest.mark.parametrize("window", [0, 5, 40, 100, 256])  # blocks 16, 16, 16, 25, 64
def test_matches_masked_reference(backend, causal, num_global, window):
    module = LongformerAttention(window=window, num_global=num_global, backend=backend)
    for nq, nk in SHAPES:
        q, k, v = make_qkv((2, 3, nq, nk, 16), seed=nq + nk, dtype=torch.float64)
        if module.not_supported_reasons(q, k, v, causal):
            assert causal and nq > nk or nq - nk > window and not num_global
            continue
        mask = longformer_mask(nq, nk, window, num_global, causal)
        ref = reference_attention(q, k, v, causal=causal, mask=mask)
        torch.testing.assert_close(module(q, k, v, causal), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["chunked", "dense_mask"])
def test_float32_close_to_reference(backend):
    module = LongformerAttention(window=16, num_global=2, backend=backend)
    q, k, v = make_qkv((1, 2, 100, 100, 32), seed=1)
    ref = reference_attention(q, k, v, mask=longformer_mask(100, 100, 16, 2, False))
    torch.testing.assert_close(module(q, k, v).double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["chunked", "dense_mask"])
@pytest.mark.parametrize("causal", [False, True])
def test_window_covering_sequence_is_exact(backend, causal):
    module = LocalAttention(window=70, backend=backend)
    q, k, v = make_qkv((2, 2, 70, 70, 16), seed=2, dtype=torch.float64)
    ref = reference_attention(q, k, v, causal=causal)
    torch.testing.assert_close(module(q, k, v, causal), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["chunked", "dense_mask"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(50, 50), (30, 77), (83, 70)])  # (83, 70): rows 2-7 see
def test_gradients_match_masked_reference(backend, causal, shape):  # only the global keys
    nq, nk = shape
    if causal and nq > nk:
        pytest.skip("causal attention with more queries than keys is unsupported")
    module = LongformerAttention(window=7, num_global=2, backend=backend)
    q, k, v = make_qkv((2, 2, nq, nk, 8), seed=3, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 2, nq, 8, dtype=torch.float64)
    got = torch.autograd.grad(module(q, k, v, causal), (q, k, v), grad_out)
    ref = torch.autograd.grad(band_attention(q, k, v, 7, 2, causal), (q, k, v), grad_out)
    for name, a, b in zip("qkv", got, ref):
        assert torch.isfinite(a).all(), f"d{name} not finite"
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"d{name} differs")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("num_global", [0, 2])
@pytest.mark.parametrize(
    "window, shape", [(150, (333, 333)), (256, (600, 600)), (256, (410, 700))]
)
def test_forward_and_backward_blockings_differ_yet_match(window, shape, num_global, causal):
    # windows >= 128: the fused CPU path blocks its forward by 32 rows and its backward by
    # block_size (37, 64); the backward reads the forward's rows in its own blocking
    from variants.engines.band import block_size, forward_block_size

    assert forward_block_size(window) != block_size(window)
    nq, nk = shape
    module = LongformerAttention(window=window, num_global=num_global, backend="chunked")
    q, k, v = make_qkv((1, 2, nq, nk, 8), seed=window, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(1, 2, nq, 8, dtype=torch.float64)
    out = module(q, k, v, causal)
    ref = band_attention(q, k, v, window, num_global, causal)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    want = torch.autograd.grad(ref, (q, k, v), grad_out)
    for name, a, b in zip("qkv", got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"d{name} differs")


def _candidate_blockings(window: int) -> list[tuple[int, int]]:
    """Every (forward, backward) blocking the tuner may pick at ``window`` (fused CPU path)."""
    module = LongformerAttention(window=window, backend="chunked")
    forward, backward = module.band_knobs(window, fused=True)
    return list(itertools.product(forward.candidates, backward.candidates))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "window, blocks",
    [(w, blocks) for w in (9, 150, 256) for blocks in _candidate_blockings(w)],
)
def test_every_candidate_blocking_matches_the_reference(
    window, blocks, causal, fused, monkeypatch
):
    # the user's blockings (as the tuner's are passed) on the fused path and off it, where
    # block_size blocks both passes; values and gradients in float64
    import variants.engines.band as band

    if not fused:
        monkeypatch.setattr(band, "fused_available", lambda *tensors: False)
    forward_block, block = blocks
    module = LongformerAttention(
        window=window, num_global=2, backend="chunked", block_size=block,
        forward_block_size=forward_block,
    )  # fmt: skip
    nq, nk = (300, 333) if window > 9 else (45, 60)
    q, k, v = make_qkv((1, 2, nq, nk, 8), seed=window, dtype=torch.float64, requires_grad=True)
    out, ref = module(q, k, v, causal), band_attention(q, k, v, window, 2, causal)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert module.engine_config()["block_size"] == block
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    for a, b in zip(got, torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_auto_resolves_to_chunked_on_cpu():
    module = variants.create("longformer", kv_len=64, head_dim=16)
    q, k, v = make_qkv((1, 1, 64, 64, 16))
    assert module.resolved_backend(q, k, v, False) == "chunked"
    module(q, k, v)
    assert module.config()["resolved_backend"] == "chunked"


def test_xformers_reasons_on_cpu_and_with_globals():
    q, k, v = make_qkv((1, 1, 64, 64, 16))
    reasons = LongformerAttention(num_global=2, backend="xformers").not_supported_reasons(
        q, k, v, False
    )
    assert any("num_global" in r for r in reasons) and any("CUDA" in r for r in reasons)


def test_queries_without_keys_are_unsupported():
    module = LocalAttention(window=4, backend="chunked")
    q, k, v = make_qkv((1, 1, 20, 10, 8))
    assert any("no key" in r for r in module.not_supported_reasons(q, k, v, False))


@pytest.mark.parametrize(
    "params, field",
    [
        ({"window": -1}, "window"),
        ({"num_global": -2}, "num_global"),
        ({"num_global": 65, "kv_len": 64}, "num_global"),
        ({"backend": "triton"}, "backend"),
        ({"window": 2.5}, "window"),
    ],
)
@pytest.mark.parametrize("name", ["longformer", "local"])
def test_bad_parameters_name_the_field(name, params, field):
    with pytest.raises(VariantConfigError, match=field):
        variants.create(name, **params)


def test_flops_and_memory_grow_linearly():
    module = LocalAttention(window=256)
    f1, f2 = (module.flops(1, 8, n, n, 64, False) for n in (4096, 8192))
    m1, m2 = (module.analytic_mem_bytes(1, 8, n, n, 64, False) for n in (4096, 8192))
    assert 1.9 < f2 / f1 < 2.1 and 1.9 < m2 / m1 < 2.1


@pytest.mark.skipif(os.environ.get("ATTNBENCH_SKIP_FLEX") == "1", reason="ATTNBENCH_SKIP_FLEX=1")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "n, window, num_global",
    [(200, 20, 2), (256, 40, 0)],  # not / a multiple of flex's 128-token blocks; globals or not
)
def test_flex_matches_masked_reference(causal, n, window, num_global):
    # Compiles flex_attention with torch.compile (a C++ compiler on the CPU): ~35 s for the four
    # cases in a fresh process on the 2-core build machine; skipped with the reason when the
    # machine cannot compile (the backend reports itself unsupported).
    module = LongformerAttention(window=window, num_global=num_global, backend="flex")
    q, k, v = make_qkv((1, 2, n, n, 16), seed=4)
    reasons = module.not_supported_reasons(q, k, v, causal)
    if reasons:
        pytest.skip("; ".join(reasons))
    module.setup(q, k, v, causal)
    ref = reference_attention(
        q, k, v, causal=causal, mask=longformer_mask(n, n, window, num_global, causal)
    )
    torch.testing.assert_close(module(q, k, v, causal).double(), ref, rtol=1e-5, atol=1e-5)


def test_xformers_backend_without_an_operator_is_unsupported(monkeypatch):
    """Seen on an H100: xformers imports but its CUDA extension does not load; the dispatcher's
    refusal must make the point unsupported before any work, not an error inside the forward."""
    import variants.longformer as lf

    monkeypatch.setattr(lf, "_xformers_reasons", lambda q, num_global: [])
    monkeypatch.setattr(lf.LongformerAttention, "_xformers_bias", lambda self, causal: None)
    refusal = "xformers: no operator for these inputs: fa3F is not supported"
    monkeypatch.setattr(lf, "xformers_dispatch_error", lambda q, k, v, scale, bias: refusal)
    module = lf.LongformerAttention(
        kv_len=32, head_dim=8, window=4, num_global=0, backend="xformers"
    )
    q = torch.randn(1, 2, 32, 8)
    assert module.not_supported_reasons(q, q, q, False) == [refusal]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window, num_global", [(40, 2), (256, 1), (150, 0)])
def test_unfused_path_matches_reference(window, num_global, causal, monkeypatch):
    # the chunked path GPUs take (autograd through the slot view, global keys in every
    # stored block; the key buffer a padded copy when there are none), run on the CPU
    import variants.engines.band as band

    monkeypatch.setattr(band, "fused_available", lambda *tensors: False)
    module = LongformerAttention(window=window, num_global=num_global, backend="chunked")
    for nq, nk in [(300, 300), (90, 333), (333, 300)]:
        if causal and nq > nk:
            continue
        q, k, v = make_qkv((1, 2, nq, nk, 8), seed=nq, dtype=torch.float64, requires_grad=True)
        out, ref = module(q, k, v, causal), band_attention(q, k, v, window, num_global, causal)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        grad = torch.randn_like(out)
        got = torch.autograd.grad(out, (q, k, v), grad)
        for a, b in zip(got, torch.autograd.grad(ref, (q, k, v), grad)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["chunked", "dense_mask"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [2, 1])
def test_grouped_heads_match_the_reference_with_keys_repeated(kv_heads, causal, backend):
    module = LongformerAttention(window=5, num_global=2, backend=backend)
    q, k, v = make_qkv((2, 4, 40, 40, 16), seed=6, dtype=torch.float64, kv_heads=kv_heads)
    mask = longformer_mask(40, 40, 5, 2, causal)
    ref = reference_attention(q, k, v, causal=causal, mask=mask)  # repeats k, v itself
    torch.testing.assert_close(module(q, k, v, causal), ref, rtol=1e-10, atol=1e-10)


def test_kv_heads_that_do_not_divide_heads_are_refused():
    q, k, v = make_qkv((1, 4, 20, 20, 8), kv_heads=3)
    reasons = LongformerAttention(window=4).not_supported_reasons(q, k, v, False)
    assert reasons == ["longformer: kv_heads=3 must divide heads=4"]
    with pytest.raises(ValueError, match="kv_heads=3 must divide heads=4"):
        LongformerAttention(window=4)(q, k, v)
