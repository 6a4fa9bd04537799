"""The block engines against their plain references, in float64: block-sparse attention
(variants.engines.blocksparse), the band built on it (variants.engines.band) and the tiles a
flex block mask computes (variants.engines.flex)."""

import pytest
import torch

import variants
import variants.engines.band as band
from harness.conformance import make_qkv
from variants.engines import band_naive, blocksparse_naive, flex_naive
from variants.engines.blocksparse import block_sparse_attention
from variants.engines.flex import block_mask_pairs
from variants.longformer import LongformerAttention

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_registry_lists_no_engine():
    assert not [path for path in variants.BUILTINS.values() if ".engines." in path]


def _slots(k, v, block, nq, slots, gen):
    """Random key slots per query block (one gather, repeats allowed) and a random slot mask in
    which every row sees its first slot."""
    b, h, nk, d = k.shape
    nqb = -(-nq // block)
    index = torch.randint(0, nk, (nqb * slots,), generator=gen)
    k_slots = k.reshape(b * h, nk, d)[:, index].view(b * h, nqb, slots, d)
    v_slots = v.reshape(b * h, nk, -1)[:, index].view(b * h, nqb, slots, -1)
    mask = torch.rand(nqb, block, slots, generator=gen) < 0.5
    mask[..., 0] = True
    return k_slots, v_slots, mask


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("num_global", [0, 3])
@pytest.mark.parametrize("lengths, block", [((40, 40), 8), ((29, 53), 8), ((21, 21), 16)])
def test_block_sparse_matches_its_reference(lengths, block, num_global, causal):
    nq, nk = lengths
    q, k, v = make_qkv((2, 2, nq, nk, 8), seed=nq, dtype=torch.float64, requires_grad=True)
    gen = torch.Generator().manual_seed(nk)
    k_slots, v_slots, mask = _slots(k, v, block, nq, 12, gen)
    args = (k_slots, v_slots, mask, k, v, num_global, causal, 0.3)
    out = block_sparse_attention(q, *args)
    ref = blocksparse_naive.block_sparse_attention(q, *args)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)  # the slots' gather
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for name, a, b in zip("qkv", got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"d{name} differs")


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window, num_global", [(0, 0), (9, 2), (40, 1)])
def test_band_matches_its_reference(window, num_global, causal, fused, monkeypatch):
    # fused: the CPU flash kernel's autograd Function; else autograd through the slot view
    if not fused:
        monkeypatch.setattr(band, "fused_available", lambda *tensors: False)
    for nq, nk in [(77, 77), (45, 100)]:
        q, k, v = make_qkv((1, 2, nq, nk, 8), seed=nq, dtype=torch.float64, requires_grad=True)
        out = band.chunked_attention(q, k, v, window, num_global, causal, 0.35)
        ref = band_naive.band_attention(q, k, v, window, num_global, causal, 0.35)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        grad = torch.randn_like(out)
        got = torch.autograd.grad(out, (q, k, v), grad)
        for a, b in zip(got, torch.autograd.grad(ref, (q, k, v), grad)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window, num_global", [(20, 0), (150, 2)])
@pytest.mark.parametrize("lengths", [(300, 300), (200, 450), (128, 256)])
def test_flex_tile_count_matches_the_dense_mask(lengths, window, num_global, causal):
    nq, nk = lengths
    spans = LongformerAttention(window=window, num_global=num_global)._key_spans(nq, nk, causal)
    allowed = band_naive.band_mask(nq, nk, window, num_global, causal)
    assert block_mask_pairs(nq, nk, spans, 64) == flex_naive.tile_pairs(allowed, 64)
    assert block_mask_pairs(nq, nk, spans) == flex_naive.tile_pairs(allowed, 128)


def test_flex_reference_evaluates_the_mask_mod():
    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx + 2) & (kv_idx >= q_idx - 1)

    allowed = flex_naive.dense_mask(mask_mod, 6, 8)
    assert allowed.tolist()[0] == [True, True, True, False, False, False, False, False]
    q, k, v = make_qkv((1, 1, 6, 8, 4), dtype=torch.float64)
    want = blocksparse_naive.masked_attention(q, k, v, allowed, 0.5)
    torch.testing.assert_close(flex_naive.flex_attention(q, k, v, mask_mod, 0.5), want)
