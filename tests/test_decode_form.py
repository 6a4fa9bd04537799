"""The decode form: prefill then step against float64 references (exact, band, kernel forms),
the KV cache written in place, the ring buffer and the running sums bounded, the state models,
and the refusals (no decode form, bad step inputs). The conformance kit's decode check runs
over every variant in test_conformance.py."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close

import variants
from harness.conformance import make_qkv
from harness.measure.reference import reference_attention
from variants.decode import DecodeState
from variants.engines.band_naive import band_attention
from variants.engines.prefix_naive import quadratic_form
from variants.grouped import repeat_kv

pytestmark = pytest.mark.usefixtures("one_thread")

DECODERS = ["full", "sdpa", "longformer", "local", "linear", "performer", "hedgehog"]


def decode(module, q, k, v, prompt, tokens=1, max_len=None):
    """Prefill ``prompt`` tokens, then step ``tokens`` at a time: the outputs, concatenated."""
    outs, state = [], None
    with torch.no_grad():
        out, state = module.prefill(q[:, :, :prompt], k[:, :, :prompt], v[:, :, :prompt], max_len)
        outs.append(out)
        for start in range(prompt, q.shape[-2], tokens):
            part = slice(start, start + tokens)
            out, state = module.step(q[:, :, part], k[:, :, part], v[:, :, part], state)
            outs.append(out)
    return torch.cat(outs, dim=-2), state


def token(q, k, v, i):
    return q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1]


def qkv64(heads=4, kv_heads=2, n=40, d=8, seed=0):
    return make_qkv((2, heads, n, n, d), seed=seed, dtype=torch.float64, kv_heads=kv_heads)


@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("name", ["full", "sdpa"])
def test_exact_decode_equals_the_reference(name, kv_heads, tokens):
    q, k, v = qkv64(kv_heads=kv_heads)
    out, state = decode(variants.create(name), q, k, v, prompt=17, tokens=tokens, max_len=40)
    assert_close(out, reference_attention(q, k, v, causal=True), rtol=1e-10, atol=1e-12)
    assert state.length == 40 and state["k"].shape == (2, kv_heads, 40, 8)


@pytest.mark.parametrize("window,num_global", [(3, 0), (5, 2), (0, 1), (50, 1)])
@pytest.mark.parametrize("tokens", [1, 4])
def test_window_decode_equals_the_band_reference(window, num_global, tokens):
    q, k, v = qkv64()
    module = variants.create("longformer", window=window, num_global=num_global)
    out, state = decode(module, q, k, v, prompt=11, tokens=tokens)
    ref = band_attention(q, repeat_kv(k, 2), repeat_kv(v, 2), window, num_global, causal=True)
    assert_close(out, ref, rtol=1e-10, atol=1e-12)
    ring = state["k"].shape[-2] - num_global  # stops growing at window + MAX_STEP_TOKENS
    assert ring == window + 4 if window + 4 < 20 else ring <= window + 4


def elu1(x):
    return F.elu(x) + 1


@pytest.mark.parametrize("tokens", [1, 2, 4])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_linear_decode_equals_its_quadratic_form(kv_heads, tokens):
    q, k, v = qkv64(kv_heads=kv_heads)
    out, state = decode(variants.create("linear"), q, k, v, prompt=9, tokens=tokens)
    group = 4 // kv_heads
    ref = quadratic_form(elu1(q), elu1(repeat_kv(k, group)), repeat_kv(v, group), causal=True)
    assert_close(out, ref, rtol=1e-10, atol=1e-12)
    assert state["kv"].shape == (2, kv_heads, 8, 9)  # (B, Hkv, m, Dv + 1): per KV head


def test_performer_running_max_rescales_the_state():
    # later keys far larger than the prompt's: the running max grows and the state is rescaled
    q, k, v = qkv64(kv_heads=1, d=16)
    k[:, :, 25:] *= 4.0
    module = variants.create("performer", nb_features=64, head_dim=16)
    with torch.no_grad():
        full = module(q, k, v, causal=True)
    out, state = decode(module, q, k, v, prompt=10, tokens=2)
    assert_close(out, full, rtol=1e-9, atol=1e-12)
    assert state["kv"].shape == (2, 1, 64, 17) and state["key_max"].shape == (2, 1, 1, 1)


def test_hedgehog_state_is_per_query_head():
    # one feature map per query head: grouped keys are repeated, the state is per query head
    q, k, v = qkv64(kv_heads=2)
    module = variants.create("hedgehog", heads=4, head_dim=8)
    with torch.no_grad():
        module.weight += 0.1 * torch.randn(module.weight.shape)  # not the identity
        full = module(q, repeat_kv(k, 2), repeat_kv(v, 2), causal=True)
    out, state = decode(module, q, k, v, prompt=13, tokens=3)
    assert_close(out, full, rtol=1e-10, atol=1e-12)
    assert state["kv"].shape == (2, 4, 16, 9)
    assert module.state_bytes(2, 2, 1000, 8, element_size=8) == state.nbytes()


@pytest.mark.parametrize("name", ["full", "sdpa"])
def test_the_kv_cache_is_written_in_place(name):
    q, k, v = qkv64()
    module = variants.create(name)
    with torch.no_grad():
        _, state = module.prefill(q[:, :, :10], k[:, :, :10], v[:, :, :10], max_len=40)
        pointers = (state["k"].data_ptr(), state["v"].data_ptr())
        for i in range(10, 40):
            _, state = module.step(
                q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1], state
            )
            assert (state["k"].data_ptr(), state["v"].data_ptr()) == pointers
    assert torch.equal(state["k"], k) and torch.equal(state["v"], v)


def test_a_cache_without_max_len_grows_by_doubling():
    q, k, v = qkv64()
    module, slots = variants.create("sdpa"), []
    with torch.no_grad():
        _, state = module.prefill(q[:, :, :5], k[:, :, :5], v[:, :, :5])
        for i in range(5, 40):
            _, state = module.step(
                q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1], state
            )
            slots.append(state["k"].shape[-2])
    assert sorted(set(slots)) == [10, 20, 40]  # reallocated 3 times in 35 steps


@pytest.mark.parametrize("name", DECODERS)
def test_state_models(name):
    module = variants.create(name, head_dim=64)
    sizes = [module.state_bytes(1, 8, n, 64) for n in (1024, 4096, 32768)]
    reads = [module.step_read_bytes(1, 8, 8, n, 64) for n in (1024, 32768)]
    if name in ("full", "sdpa"):  # the KV cache grows with the context
        assert sizes == [2 * 8 * n * 64 * 4 for n in (1024, 4096, 32768)]
        assert reads[1] > 30 * reads[0]
    else:  # a ring of the window or a running sum: constant
        assert sizes[0] == sizes[1] == sizes[2] and reads[0] == reads[1]
    if name != "hedgehog":  # per KV head: 2 of 8 KV heads hold a quarter
        assert module.state_bytes(1, 2, 32768, 64) * 4 == sizes[2]


def test_linear_state_is_tiny():
    assert variants.create("linear").state_bytes(1, 8, 32768, 64) == 8 * 64 * 65 * 4
    performer = variants.create("performer", nb_features=256, head_dim=64)
    assert performer.state_bytes(1, 8, 32768, 64) == 8 * (256 * 65 + 1) * 4


@pytest.mark.parametrize("name", ["linformer", "nystrom", "bigbird", "xformers"])
def test_variants_without_a_decode_form_say_why(name):
    module = variants.create(name, kv_len=64, head_dim=8)
    q, k, v = make_qkv((1, 2, 64, 64, 8))
    reasons = module.decode_not_supported_reasons(q, k, v)
    assert not module.supports_decode and reasons and reasons[0].startswith(f"{name}: no decode")
    with pytest.raises(NotImplementedError, match="no decode form"):
        module.prefill(q, k, v)


def test_linformer_nystrom_bigbird_reasons_name_the_whole_sequence():
    words = {"linformer": "whole sequence", "nystrom": "segments", "bigbird": "random"}
    for name, word in words.items():
        assert word in variants.get_class(name).no_decode_reason


def test_performer_redraw_every_call_and_eps_have_no_decode_form():
    q, k, v = make_qkv((1, 2, 16, 16, 8))
    redraw = variants.create("performer", redraw="every_call", nb_features=16)
    assert "every_call" in " ".join(redraw.decode_not_supported_reasons(q, k, v))
    eps = variants.create("performer", eps=1e-4, nb_features=16, head_dim=8)
    assert "eps" in " ".join(eps.decode_not_supported_reasons(q, k, v))


@pytest.mark.parametrize("name", DECODERS)
def test_bad_step_inputs_name_the_field(name):
    q, k, v = make_qkv((1, 2, 12, 12, 8))
    module = variants.create(name, head_dim=8)
    with pytest.raises(ValueError, match="max_len=5"):
        module.prefill(q[:, :, :8], k[:, :, :8], v[:, :, :8], max_len=5)
    with torch.no_grad():
        _, state = module.prefill(q[:, :, :6], k[:, :, :6], v[:, :, :6], max_len=12)
    with pytest.raises(ValueError, match="step tokens=5"):
        module.step(q[:, :, 6:11], k[:, :, 6:11], v[:, :, 6:11], state)
    with pytest.raises(ValueError, match="step tokens=0"):
        module.step(q[:, :, 6:6], k[:, :, 6:6], v[:, :, 6:6], state)
    with pytest.raises(TypeError, match="DecodeState"):
        module.step(q[:, :, 6:7], k[:, :, 6:7], v[:, :, 6:7], {"k": k})


def test_decode_state_counts_each_storage_once():
    base = torch.zeros(10, 4)
    state = DecodeState({"a": base, "b": base[:5], "c": torch.zeros(3)}, length=7)
    assert state.nbytes() == 10 * 4 * 4 + 3 * 4
