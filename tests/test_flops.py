"""FLOP counts follow the kernels: forward and backward against ``FlopCounterMode``.

``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of matmul-like operators (and of
the fused SDPA kernels, with its own formulas) and nothing else. The suite's counts are matmul
FLOPs too (a multiply-add counts 2; softmax, exp, masks, feature maps and sums are elementwise
work neither counts), so the stated tolerance is zero: every count below matches exactly.

torch registers its fused-SDPA formulas (forward: ``Q K^T`` and ``P V``; backward: five matmuls,
the recomputed scores included) for the CUDA kernels only; the tests register the same formulas
for the CPU flash kernel, so variants built on SDPA are counted as they run here.
"""

import itertools
import math

import pytest
import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

import variants
from harness.conformance import make_qkv
from variants.base import causal_mask, exact_attention_flops, visible_pairs
from variants.engines.prefix_costs import CHUNKS, GROUPS
from variants.longformer import longformer_mask

pytestmark = pytest.mark.usefixtures("one_thread")

#: Relative tolerance between our counts and FlopCounterMode's (both count matmuls only).
REL_TOL = 0.0

_aten = torch.ops.aten


def _flash_cpu(q, k, v, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(q, k, v)


def _flash_cpu_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_out, q, k, v)


CPU_FLASH = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _flash_cpu,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _flash_cpu_backward,
}


def counted(module, shape, causal, kv_heads=None):
    """(forward, backward) FLOPs FlopCounterMode sees for one call on ``shape``."""
    q, k, v = make_qkv(shape, seed=0, requires_grad=True, kv_heads=kv_heads)
    with FlopCounterMode(display=False, custom_mapping=CPU_FLASH) as fwd:
        out = module(q, k, v, causal)
    with FlopCounterMode(display=False, custom_mapping=CPU_FLASH) as bwd:
        out.backward(torch.randn_like(out))
    return fwd.get_total_flops(), bwd.get_total_flops()


SELF = (2, 3, 200, 200, 32)  # (B, H, Nq, Nk, D)
CROSS = (2, 3, 150, 200, 32)
CASES = [
    ("full", {}, SELF, False),
    ("full", {}, CROSS, True),  # masks, skips nothing: the same count as non-causal
    ("sdpa", {}, SELF, False),
    ("sdpa", {}, CROSS, True),  # explicit bottom-right mask: every tile computed
    ("sdpa", {"backend": "math"}, SELF, False),
    ("sdpa", {"backend": "math"}, SELF, True),
    ("linear", {}, SELF, False),
    ("linear", {"chunk_size": 64}, CROSS, True),
    ("performer", {"nb_features": 48, "head_dim": 32}, SELF, False),
    ("performer", {"nb_features": 48, "head_dim": 32, "chunk_size": 64}, CROSS, True),
    ("performer", {"nb_features": 48, "head_dim": 32, "kernel": "relu"}, SELF, False),
    ("performer", {"nb_features": 48, "head_dim": 32, "learnable_projection": True}, SELF, False),
    # the causal backward computes the features again: 1x more for their GEMM
    ("performer", {"nb_features": 48, "head_dim": 32, "kernel": "relu"}, CROSS, True),
    ("performer", {"nb_features": 48, "head_dim": 32, "learnable_projection": True}, CROSS, True),
    ("hedgehog", {"heads": 3, "head_dim": 32}, SELF, False),
    ("hedgehog", {"heads": 3, "head_dim": 32, "chunk_size": 64}, CROSS, True),
    ("linformer", {"k": 40, "kv_len": 200}, CROSS, False),
    ("linformer", {"k": 40, "kv_len": 200, "init": "learned"}, CROSS, False),
    ("linformer", {"k": 40, "kv_len": 200, "init": "mean_pool"}, CROSS, False),
    ("linformer", {"k": 40, "kv_len": 400, "init": "mean_pool"}, (1, 2, 30, 30, 32), False),
    ("nystrom", {"num_landmarks": 20}, CROSS, False),
    ("longformer", {"window": 16, "backend": "dense_mask"}, SELF, False),
    ("longformer", {"window": 16, "backend": "dense_mask"}, CROSS, True),
    ("longformer", {"window": 16, "backend": "chunked"}, SELF, False),
    ("longformer", {"window": 16, "backend": "chunked"}, CROSS, True),
    # window 150: the forward blocks by 32 rows, the backward by 37
    ("longformer", {"window": 150, "backend": "chunked", "num_global": 2}, SELF, False),
    ("longformer", {"window": 150, "backend": "chunked"}, CROSS, True),
    ("bigbird", {"block_size": 16}, SELF, False),
    ("bigbird", {"block_size": 16}, SELF, True),
]


def _candidate_cases() -> list:
    """Every value the tuner may pick (variants.tuning), set by hand: the causal prefix sums'
    chunks (the group does not change the work) and Longformer's blockings per pass."""
    cases = []
    for chunk in CHUNKS:
        cases += [
            ("linear", {"chunk_size": chunk, "group_elements": GROUPS[0]}, CROSS, True),
            ("performer", {"nb_features": 48, "head_dim": 32, "chunk_size": chunk}, SELF, True),
            ("hedgehog", {"heads": 3, "head_dim": 32, "chunk_size": chunk}, CROSS, True),
        ]
    for window, num_global, shape, causal in [(150, 2, SELF, False), (16, 1, CROSS, True)]:
        probe = variants.create("longformer", window=window, backend="chunked")
        first, block = probe.band_knobs(window, fused=True)
        for fb, b in itertools.product(first.candidates, block.candidates):
            params = {"window": window, "backend": "chunked", "num_global": num_global}
            params |= {"forward_block_size": fb, "block_size": b}
            cases.append(("longformer", params, shape, causal))
    return cases


CASES += _candidate_cases()


@pytest.mark.parametrize("name, params, shape, causal", CASES)
def test_counts_match_flop_counter(name, params, shape, causal):
    module = variants.create(name, **params)
    fwd, bwd = counted(module, shape, causal)
    assert fwd > 0 and bwd > 0
    assert module.flops(*shape, causal) == pytest.approx(fwd, rel=REL_TOL)
    assert module.backward_flops(*shape, causal) == pytest.approx(bwd, rel=REL_TOL)


GROUPED = (2, 4, 120, 120, 32)  # (B, H, Nq, Nk, D) with 2 KV heads
GROUPED_CASES = [
    ("full", {}, False),
    ("sdpa", {}, False),  # enable_gqa: the CPU flash kernel reads the KV heads as they are
    ("sdpa", {"backend": "math"}, True),
    ("linear", {}, False),  # the keys' summary per KV head
    ("linear", {}, True),  # causal: k, v repeated to the query heads
    ("performer", {"nb_features": 48, "head_dim": 32}, False),
    ("performer", {"nb_features": 48, "head_dim": 32, "kernel": "relu"}, False),
    ("linformer", {"k": 40, "kv_len": 120}, False),  # projected once per KV head
    ("nystrom", {"num_landmarks": 20}, False),  # repeated
    ("longformer", {"window": 16, "backend": "chunked"}, True),
    ("hedgehog", {"heads": 4, "head_dim": 32}, False),
]


@pytest.mark.parametrize("name, params, causal", GROUPED_CASES)
def test_grouped_head_counts_match_flop_counter(name, params, causal):
    module = variants.create(name, **params)
    fwd, bwd = counted(module, GROUPED, causal, kv_heads=2)
    assert module.flops(*GROUPED, causal, kv_heads=2) == pytest.approx(fwd, rel=REL_TOL)
    assert module.backward_flops(*GROUPED, causal, kv_heads=2) == pytest.approx(bwd, rel=REL_TOL)
    native = name in ("linear", "performer", "linformer") and not causal
    grouped, whole = module.flops(*GROUPED, causal, kv_heads=2), module.flops(*GROUPED, causal)
    assert grouped < whole if native else grouped == whole


@pytest.mark.parametrize(
    "name, params, factor",
    [
        ("full", {}, 2.0),  # autograd: dP, dV, dQ, dK
        ("sdpa", {"backend": "math"}, 2.0),
        ("sdpa", {}, 2.5),  # fused: recomputes Q K^T, then four matmuls
        ("longformer", {"backend": "dense_mask"}, 2.5),
        ("longformer", {"backend": "chunked", "num_global": 0, "window": 100}, 2.5),
        ("bigbird", {}, 2.5),
        ("linear", {}, 2.0),
    ],
)
def test_backward_factor_per_kernel(name, params, factor):
    module = variants.create(name, **params)
    shape = (1, 8, 2048, 2048, 64)
    assert module.backward_flops(*shape, False) == factor * module.flops(*shape, False)


def test_fixed_projections_cost_one_gradient_matmul():
    # Performer's random rows and Linformer's fixed projections need no gradient: their GEMMs
    # cost 1x in the backward, so these backward counts fall below 2x the forward.
    shape = (1, 8, 1024, 1024, 64)
    fixed = variants.create("performer", head_dim=64, nb_features=128)
    learned = variants.create("performer", head_dim=64, nb_features=128, learnable_projection=True)
    assert fixed.backward_flops(*shape, False) < 2 * fixed.flops(*shape, False)
    assert learned.backward_flops(*shape, False) == 2 * learned.flops(*shape, False)


def test_causal_sdpa_counts_the_tiles_its_fused_kernel_skips():
    n, shape = 2048, (1, 8, 2048, 2048, 64)
    fused = variants.create("sdpa")
    full_work = exact_attention_flops(1, 8, n, n, 64)
    assert fused.flops(*shape, False) == full_work
    assert fused.flops(*shape, True) == 4 * 8 * 64 * n * (n + 1) // 2  # about half
    assert variants.create("sdpa", backend="math").flops(*shape, True) == full_work
    assert variants.create("full").flops(*shape, True) == full_work
    cross = (1, 8, 1024, 2048, 64)  # explicit mask: nothing skipped
    assert fused.flops(*cross, True) == fused.flops(*cross, False)
    xformers = variants.create("xformers")  # bottom-right masks skip tiles, cross included
    assert xformers.flops(*cross, True) == 4 * 8 * 64 * visible_pairs(1024, 2048, True)


@pytest.mark.parametrize("q_len, kv_len", [(7, 7), (5, 9), (1, 6), (9, 5), (33, 100)])
def test_visible_pairs_is_the_mask_count(q_len, kv_len):
    assert visible_pairs(q_len, kv_len, True) == int(causal_mask(q_len, kv_len).sum())
    assert visible_pairs(q_len, kv_len, False) == q_len * kv_len


def test_longformer_dense_mask_counts_the_dense_work():
    # issue 13: n=2048, w=256, 8 heads: dense_mask does 8.59 GF, the chunked blocks 2.46 GF
    shape = (1, 8, 2048, 2048, 64)
    dense = variants.create("longformer", window=256, backend="dense_mask")
    chunked = variants.create("longformer", window=256, backend="chunked")
    assert dense.flops(*shape, False) == variants.create("full").flops(*shape, False)
    assert dense.flops(*shape, False) / 1e9 == pytest.approx(8.59, abs=0.01)
    # the forward's 32-row blocks: 2048 rows x 544 slots x 4 D per head, the global query's
    # row (2048 keys) and the global key's scores (2 D per row) beside the slots
    assert chunked.flops(*shape, False) / 1e9 == pytest.approx(2.29, abs=0.01)
    assert chunked.flops(*shape, False) == 8 * 64 * (4 * (2048 * 544 + 2048) + 2 * 2048)


def test_longformer_chunked_backward_counts_its_own_blocking_and_the_global_keys():
    # the backward's 64-row blocks (576 slots) recomputed and differentiated, 2.5x their
    # forward; the global key's scores again and four products, 5x its one
    shape = (1, 8, 2048, 2048, 64)
    one = variants.create("longformer", backend="chunked", num_global=1)
    none = variants.create("longformer", backend="chunked", num_global=0)
    keys = 8 * 2 * 2048 * 64  # the global key's scores: 2 D per row
    blocks64 = 8 * 64 * 4 * (2048 * 576 + 2048)  # with the global query's row
    assert one.backward_flops(*shape, False) == 2.5 * blocks64 + 5 * keys
    assert none.backward_flops(*shape, False) == 2.5 * 8 * 64 * 4 * 2048 * 576


@pytest.mark.parametrize(
    "q_len, kv_len, window, num_global, causal",
    [
        (300, 300, 40, 1, False),
        (300, 300, 40, 1, True),
        (1000, 1000, 100, 0, False),
        (1000, 1000, 100, 130, True),
        (200, 333, 64, 2, False),
        (200, 333, 64, 2, True),
    ],
)
def test_longformer_flex_counts_the_tiles_of_its_block_mask(
    q_len, kv_len, window, num_global, causal
):
    from torch.nn.attention.flex_attention import create_block_mask

    module = variants.create("longformer", window=window, num_global=num_global, backend="flex")
    mask = longformer_mask(q_len, kv_len, window, num_global, causal)

    def mask_mod(b, h, q_idx, kv_idx):
        return mask[q_idx, kv_idx]

    tiles = create_block_mask(mask_mod, None, None, q_len, kv_len, device="cpu").to_dense()[0, 0]
    block = 128
    rows = torch.tensor([min(block, q_len - i * block) for i in range(tiles.shape[0])])
    cols = torch.tensor([min(block, kv_len - j * block) for j in range(tiles.shape[1])])
    pairs = int((tiles.bool() * rows[:, None] * cols[None, :]).sum())
    assert module.flops(1, 1, q_len, kv_len, 1, causal) == 4 * pairs
    assert pairs >= int(mask.sum())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("q_len, kv_len", [(300, 300), (120, 300)])
def test_longformer_xformers_counts_the_band(causal, q_len, kv_len):
    module = variants.create("local", window=37, backend="xformers")
    band = int(longformer_mask(q_len, kv_len, 37, 0, causal).sum())
    assert module.flops(2, 3, q_len, kv_len, 16, causal) == 4 * 2 * 3 * 16 * band


def test_longformer_memory_follows_the_backend():
    shape = (1, 8, 16384, 16384, 64)
    mem = {
        backend: variants.create("longformer", window=256, backend=backend).analytic_mem_bytes(
            *shape, False
        )
        for backend in ("chunked", "dense_mask", "flex", "xformers")
    }
    assert mem["dense_mask"] > 16384**2 * 5  # boolean mask and float bias, n x n
    assert mem["xformers"] == 8 * 16384 * (64 * 4 + 4)  # output and log-sum-exp only
    assert mem["xformers"] < mem["flex"] < mem["chunked"] < mem["dense_mask"]


def test_auto_counts_the_backend_of_the_last_call():
    module = variants.create("longformer", window=16)
    shape = (1, 2, 64, 64, 8)
    chunked = variants.create("longformer", window=16, backend="chunked")
    assert module.flops(*shape, False) == chunked.flops(*shape, False)
    q, k, v = make_qkv(shape, seed=1)
    module(q, k, v)
    assert module.resolved_backend(q, k, v) == "chunked"
    assert module.flops(*shape, False) == chunked.flops(*shape, False)


class _Plugin(variants.AttentionVariant):
    name = "plugin_flops"

    def forward(self, q, k, v, causal=False):
        return v

    def flops(self, batch, heads, q_len, kv_len, head_dim, causal):
        return 10 * batch * heads * q_len


def test_base_defaults_backward_twice_forward_and_untrained():
    module = _Plugin()
    assert module.backward_flops(2, 3, 5, 5, 4, False) == 2 * module.flops(2, 3, 5, 5, 4, False)
    assert module.trained is False
    assert variants.create("linformer", kv_len=16, k=4, init="learned").trained is False


def _solve_triangular(a, b, *args, out_shape=None, **kwargs):
    """A unit lower-triangular solve by forward substitution: ``s (s - 1) / 2`` multiply-adds
    per right-hand side (the count of :func:`variants.deltanet.delta_flops`)."""
    s, rhs = a[-1], b[-1]  # FlopCounterMode passes the operands' shapes
    return 2 * (s * (s - 1) // 2) * rhs * (math.prod(b) // (s * rhs))


WITH_SOLVES = CPU_FLASH | {_aten.linalg_solve_triangular: _solve_triangular}
RECURRENT_CASES = [
    ("retention", {}),
    ("retention", {"normalize": False, "chunk_size": 64}),
    ("deltanet", {}),
    ("deltanet", {"gate": "learned", "chunk_size": 32}),
]


@pytest.mark.parametrize("shape", [(2, 3, 512, 512, 32), (1, 2, 200, 200, 16), (1, 1, 7, 7, 8)])
@pytest.mark.parametrize("name, params", RECURRENT_CASES)
def test_recurrent_counts_match_flop_counter(name, params, shape):
    """Forward exactly (ragged tails and sequences shorter than a chunk included). Backward:
    autograd skips the gradient products that cannot reach the output (the first chunk's zero
    state, the last chunk's state write), which the model counts; from 8 chunks on that
    boundary is under 2% of the count, and the model is never below it."""
    module = variants.create(name, **params)
    q, k, v = make_qkv(shape, seed=0, requires_grad=True)
    with FlopCounterMode(display=False, custom_mapping=WITH_SOLVES) as fwd:
        out = module(q, k, v, True)
    with FlopCounterMode(display=False, custom_mapping=WITH_SOLVES) as bwd:
        out.backward(torch.randn_like(out))
    assert module.flops(*shape, True) == fwd.get_total_flops()
    model, counted_bwd = module.backward_flops(*shape, True), bwd.get_total_flops()
    chunks = -(-shape[2] // module.chunk())  # the chunk the call used
    assert counted_bwd <= model
    if chunks >= 8:
        assert model == pytest.approx(counted_bwd, rel=0.02)
