"""Grouped-query heads across the variants: every built-in against the float64 reference with k
and v repeated, the repeat the base class does for ``gqa = "repeat"`` (plugins included), the
refusal of a ``kv_heads`` that does not divide ``heads``, and the cost models' ``kv_heads``."""

import pytest
import torch
from helpers import assert_close

import variants
from harness.conformance import build, make_qkv
from harness.measure.reference import reference_attention
from variants.base import AttentionVariant, check_qkv
from variants.grouped import grouped_queries, repeat_kv, ungroup

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (2, 4, 67, 67, 16)
MODES = {
    "full": "native",
    "sdpa": "native",
    "xformers": "repeat",
    "longformer": "repeat",
    "local": "repeat",
    "linformer": "native",
    "performer": "native",
    "nystrom": "repeat",
    "bigbird": "repeat",
    "linear": "native",
    "hedgehog": "repeat",
    "retention": "repeat",  # the decays differ per query head
    "deltanet": "repeat",  # the write strengths differ per query head
}


def test_every_builtin_declares_its_mode():
    assert {n: variants.get_class(n).gqa for n in variants.builtin_names()} == MODES


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [2, 1])
@pytest.mark.parametrize("name", variants.builtin_names())
def test_float64_grouped_heads_equal_keys_repeated(name, kv_heads, causal):
    module, twin = build(name, SHAPE[3], SHAPE[4]), build(name, SHAPE[3], SHAPE[4])
    q, k, v = make_qkv(SHAPE, seed=11, dtype=torch.float64, kv_heads=kv_heads)
    if module.not_supported_reasons(q, k, v, causal):
        return  # xformers on the CPU, causal Linformer / Nystrom: refused with reasons
    kr, vr = repeat_kv(k, 4 // kv_heads), repeat_kv(v, 4 // kv_heads)
    with torch.no_grad():
        out, ref = module(q, k, v, causal=causal), twin(q, kr, vr, causal=causal)
    assert_close(out, ref, rtol=1e-10, atol=1e-12)
    if module.exact:
        assert_close(out, reference_attention(q, k, v, causal=causal), rtol=1e-10, atol=1e-12)


class _PerHeadOnly(AttentionVariant):
    """A plugin that knows nothing of grouped heads (the default ``gqa = "repeat"``)."""

    name = "per_head_only"

    def forward(self, q, k, v, causal=False):
        assert k.shape[1] == q.shape[1], "k must have the query heads here"
        return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v

    def flops(self, batch, heads, q_len, kv_len, head_dim, causal):
        return 1


def test_the_base_class_repeats_kv_for_a_plugin():
    q, k, v = make_qkv((1, 4, 9, 9, 8), dtype=torch.float64, kv_heads=2)
    out = _PerHeadOnly()(q, k, v)
    ref = reference_attention(q, k, v, scale=1.0)
    assert_close(out, ref, rtol=1e-10, atol=1e-12)
    # the default memory model adds the repeated k and v
    plain = _PerHeadOnly().analytic_mem_bytes(1, 4, 9, 9, 8, False)
    assert _PerHeadOnly().analytic_mem_bytes(1, 4, 9, 9, 8, False, kv_heads=2) > plain


@pytest.mark.parametrize("name", ["full", "sdpa", "linear", "performer", "hedgehog"])
def test_kv_heads_that_do_not_divide_are_one_line_errors(name):
    q, k, v = make_qkv((1, 4, 10, 10, 8), kv_heads=3)
    module = variants.create(name, head_dim=8)
    assert f"{name}: kv_heads=3 must divide heads=4" in module.not_supported_reasons(q, k, v, True)
    with pytest.raises(ValueError, match="kv_heads=3 must divide heads=4"):
        module(q, k, v)
    with pytest.raises(ValueError, match="kv_heads=3 must divide heads=4"):
        check_qkv(q, k, v)


def test_grouped_queries_round_trip_and_layout():
    q = torch.arange(2 * 4 * 3).float().view(1, 4, 3, 2)  # (B, H, T, D)
    rows = grouped_queries(q, 2)  # (B, Hkv, G * T, D): heads 0, 1 on KV head 0
    assert rows.shape == (1, 2, 6, 2) and torch.equal(rows[0, 0, 3:], q[0, 1])
    assert torch.equal(ungroup(rows, 4), q)


@pytest.mark.parametrize("name", variants.builtin_names())
def test_cost_models_take_kv_heads(name):
    module = variants.create(name, kv_len=4096, head_dim=64)
    shape = (1, 8, 4096, 4096, 64)
    for causal in (False, True):
        assert module.flops(*shape, causal) == module.flops(*shape, causal, kv_heads=8)
        grouped = module.analytic_mem_bytes(*shape, causal, kv_heads=2)
        whole = module.analytic_mem_bytes(*shape, causal)
        if module.gqa == "repeat":  # the repeated k and v: 2 * B * H * Nk * D elements
            assert grouped == whole + 2 * 8 * 4096 * 64 * 4
        assert module.backward_flops(*shape, causal, kv_heads=2) > 0
