"""The chunked recurrent engines (variants.engines.decay, variants.engines.delta) against their
token-by-token references (decay_naive, delta_naive): outputs, final states and gradients in
float64 across chunk sizes, ragged tails and split calls; float32 and long strong decays."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close

from variants.engines import decay, decay_naive, delta, delta_naive

pytestmark = pytest.mark.usefixtures("one_thread")

CHUNKS = [1, 7, 16, 64]
#: One token, fewer than a chunk, ragged tails, and whole chunks of 16 and 64.
LENGTHS = [1, 5, 37, 64, 128]
#: One decay per head: strong, RetNet-like, nearly none.
LOG_GAMMA = [-0.5, -0.05, -1e-4]
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def make_inputs(n, seed=0, dtype=torch.float64, b=2, h=3, d=5, dv=4):
    """Queries, L2-normalised keys, values, betas in (0, 1), log gates (some strong), log
    decays per head and an initial state, as a dict of the engines' argument names."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    return {
        "q": rand(b, h, n, d).to(dtype),
        "k": F.normalize(rand(b, h, n, d), dim=-1).to(dtype),
        "v": rand(b, h, n, dv).to(dtype),
        "beta": torch.sigmoid(rand(b, h, n)).to(dtype),
        "log_alpha": F.logsigmoid(2 * rand(b, h, n) + 2).to(dtype),
        "log_gamma": torch.tensor(LOG_GAMMA[:h], dtype=dtype),
        "state": rand(b, h, d, dv).to(dtype),
    }


def run_decay(x, chunk=None, with_state=True):
    args = (x["q"], x["k"], x["v"], x["log_gamma"])
    state = x["state"] if with_state else None
    if chunk is None:
        return decay_naive.decay_attention(*args, state=state)
    return decay.decay_attention(*args, chunk, state=state)


def run_delta(x, chunk=None, gated=True, with_state=True):
    args = (x["q"], x["k"], x["v"], x["beta"])
    kwargs = {"log_alpha": x["log_alpha"] if gated else None,
              "state": x["state"] if with_state else None}  # fmt: skip
    if chunk is None:
        return delta_naive.delta_rule(*args, **kwargs)
    return delta.delta_rule(*args, chunk, **kwargs)


def assert_pair_close(got, want, rtol, atol):
    """Outputs and final states alike."""
    assert got[0].shape == want[0].shape and got[1].shape == want[1].shape
    assert_close(got[0], want[0], rtol=rtol, atol=atol)
    assert_close(got[1], want[1], rtol=rtol, atol=atol)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("with_state", [False, True])
def test_decay_equals_recurrence(chunk, n, with_state):
    x = make_inputs(n)
    assert_pair_close(run_decay(x, chunk, with_state), run_decay(x, None, with_state), **TIGHT)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("with_state", [False, True])
def test_decay_key_sum_equals_recurrence(chunk, n, with_state):
    x = make_inputs(n)
    z0 = x["state"][..., 0] if with_state else None  # (B, H, D)
    got = decay.decay_key_sum(x["k"], x["log_gamma"], chunk, z0)
    assert_pair_close(got, decay_naive.decay_key_sum(x["k"], x["log_gamma"], z0), **TIGHT)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_delta_equals_recurrence(chunk, n, gated, with_state):
    x = make_inputs(n)
    got = run_delta(x, chunk, gated, with_state)
    assert_pair_close(got, run_delta(x, None, gated, with_state), **TIGHT)


@pytest.mark.parametrize("chunk", [7, 16])
def test_delta_without_gate_is_gate_of_one(chunk):
    # the two code paths: no gate, and a gate whose log is zero everywhere
    x = make_inputs(37)
    x["log_alpha"] = torch.zeros_like(x["log_alpha"])
    assert_pair_close(run_delta(x, chunk, gated=False), run_delta(x, chunk, gated=True), **TIGHT)


def grads_of(run, x, names):
    """Gradients of a fixed random linear functional of ``(out, state)`` w.r.t. ``names``."""
    leaves = {key: val.detach().requires_grad_(key in names) for key, val in x.items()}
    out, state = run(leaves)
    gen = torch.Generator().manual_seed(99)
    w_out = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    w_state = torch.randn(state.shape, generator=gen, dtype=state.dtype)
    loss = (out * w_out).sum() + (state * w_state).sum()
    return torch.autograd.grad(loss, [leaves[key] for key in names])


@pytest.mark.parametrize("chunk, n", [(1, 5), (7, 37), (16, 64), (64, 37)])
def test_decay_gradients_equal_recurrence(chunk, n):
    x = make_inputs(n, seed=1)
    names = ["q", "k", "v", "log_gamma", "state"]
    got = grads_of(lambda y: run_decay(y, chunk), x, names)
    want = grads_of(run_decay, x, names)
    differ = [name for name, g, w in zip(names, got, want) if not torch.allclose(g, w, **TIGHT)]
    assert not differ, f"gradients differ for {differ}"


@pytest.mark.parametrize("chunk, n", [(1, 5), (7, 37), (16, 64), (64, 37)])
@pytest.mark.parametrize("gated", [False, True])
def test_delta_gradients_equal_recurrence(chunk, n, gated):
    x = make_inputs(n, seed=2)
    names = ["q", "k", "v", "beta", "state"] + (["log_alpha"] if gated else [])
    got = grads_of(lambda y: run_delta(y, chunk, gated), x, names)
    want = grads_of(lambda y: run_delta(y, None, gated), x, names)
    differ = [name for name, g, w in zip(names, got, want) if not torch.allclose(g, w, **TIGHT)]
    assert not differ, f"gradients differ for {differ}"


def test_gradcheck_tiny():
    x = {key: val.requires_grad_() for key, val in make_inputs(5, b=1, h=2, d=3, dv=2).items()}
    decay_fn = lambda q, k, v, lg, s: decay.decay_attention(q, k, v, lg, 2, s)
    assert torch.autograd.gradcheck(decay_fn, (x["q"], x["k"], x["v"], x["log_gamma"], x["state"]))
    delta_fn = lambda q, k, v, b, a, s: delta.delta_rule(q, k, v, b, 2, a, s)
    assert torch.autograd.gradcheck(
        delta_fn, (x["q"], x["k"], x["v"], x["beta"], x["log_alpha"], x["state"])
    )


@pytest.mark.parametrize("engine", ["decay", "delta", "delta gated"])
def test_float32_close_to_float64(engine):
    # float32 eps is 1.2e-7; an output sums ~300 decayed terms (the slow head's outputs reach
    # ~60), so errors here are ~2e-7 of the largest value (1e-5 absolute). A tolerance of 1e-5
    # of the largest value leaves a 50x margin, while a 1% error in a decay or gate moves the
    # outputs by ~1e-3 of it and fails.
    x64 = make_inputs(300, seed=3, d=16, dv=16)
    x32 = {key: val.float() for key, val in x64.items()}
    if engine == "decay":
        got, want = run_decay(x32, 64), run_decay(x64)
    else:
        gated = engine == "delta gated"
        got, want = run_delta(x32, 64, gated), run_delta(x64, None, gated)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    for g, w in zip(got, want):
        assert_close(g.double(), w, rtol=1e-5, atol=1e-5 * w.abs().max().item())


@pytest.mark.parametrize("engine", ["decay", "delta", "delta gated"])
@pytest.mark.parametrize("chunk, first", [(16, 23), (16, 32), (7, 1), (64, 40)])
def test_two_calls_equal_one(engine, chunk, first):
    # prefill then continue from the returned state, as decoding does
    x = make_inputs(64, seed=4)
    head = {key: val[:, :, :first] if val.dim() > 1 and key != "state" else val
            for key, val in x.items()}  # fmt: skip
    tail = {key: val[:, :, first:] if val.dim() > 1 and key != "state" else val
            for key, val in x.items()}  # fmt: skip
    if engine == "decay":
        run = lambda y: run_decay(y, chunk)
    else:
        run = lambda y: run_delta(y, chunk, engine == "delta gated")
    out_head, tail["state"] = run(head)
    out_tail, state = run(tail)
    assert_pair_close((torch.cat([out_head, out_tail], dim=-2), state), run(x), **TIGHT)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_long_strong_decay_stays_finite(dtype):
    # 4096 tokens: gamma^4096 underflows for the strong head; nothing may divide by it
    x = make_inputs(4096, seed=5, dtype=dtype, b=1, h=2, d=4, dv=4)
    x["log_gamma"] = torch.tensor([-0.5, -1e-4], dtype=dtype)
    x["log_alpha"] = -5 * torch.rand(x["log_alpha"].shape, dtype=dtype)  # gates down to e^-5
    leaves = {key: val.requires_grad_() for key, val in x.items()}
    for out, state in (run_decay(leaves, 64), run_delta(leaves, 64, gated=True),
                       run_delta(leaves, 64, gated=False)):  # fmt: skip
        assert torch.isfinite(out).all() and torch.isfinite(state).all()
        grads = torch.autograd.grad(out.sum() + state.sum(), list(leaves.values()),
                                    allow_unused=True)  # fmt: skip
        assert all(torch.isfinite(g).all() for g in grads if g is not None)
    if dtype == torch.float64:
        detached = {key: val.detach() for key, val in x.items()}
        assert_pair_close(run_decay(detached, 64), run_decay(detached), **TIGHT)
        assert_pair_close(run_delta(detached, 64), run_delta(detached), **TIGHT)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs(dtype):
    x = make_inputs(37, seed=6, dtype=dtype)
    for out, state in (run_decay(x, 16), run_delta(x, 16), decay.decay_key_sum(
            x["k"], x["log_gamma"], 16)):  # fmt: skip
        assert out.dtype == dtype and state.dtype == dtype
        assert torch.isfinite(out).all() and torch.isfinite(state).all()


def test_shape_errors_name_the_field():
    x = make_inputs(8)
    with pytest.raises(ValueError, match="log_gamma"):
        decay.decay_attention(x["q"], x["k"], x["v"], x["log_gamma"][:2], 4)
    with pytest.raises(ValueError, match="chunk_size"):
        decay.decay_attention(x["q"], x["k"], x["v"], x["log_gamma"], 0)
    with pytest.raises(ValueError, match="beta"):
        delta.delta_rule(x["q"], x["k"], x["v"], x["beta"][..., :3], 4)
    with pytest.raises(ValueError, match="state"):
        delta.delta_rule(x["q"], x["k"], x["v"], x["beta"], 4, state=x["state"][..., :1])


def test_strided_inputs():
    # heads split from a (B, N, H, D) projection arrive as transposed views
    x = make_inputs(37, seed=7)
    strided = {
        key: val.transpose(1, 2).contiguous().transpose(1, 2) if val.dim() == 4 else val
        for key, val in x.items()
    }
    assert not strided["q"].is_contiguous()
    assert_pair_close(run_decay(strided, 16), run_decay(x, 16), **TIGHT)
    assert_pair_close(run_delta(strided, 16), run_delta(x, 16), **TIGHT)


@pytest.mark.parametrize("block_elements", [1, 2 * 3 * 7 * 7 * 3])  # a chunk or 3 per block
@pytest.mark.parametrize("engine", ["decay", "delta", "delta gated"])
def test_blocks_of_chunks_change_nothing(block_elements, engine, monkeypatch):
    # the CPU batches a block of chunks at a time; at these tiny shapes one block holds all
    # chunks unless the block is made smaller
    x = make_inputs(40, seed=8)
    names = ["q", "k", "v", "state"] + (["log_gamma"] if engine == "decay" else ["beta"])
    if engine == "decay":
        run = lambda y: run_decay(y, 7)
    else:
        run = lambda y: run_delta(y, 7, engine == "delta gated")
    want, want_grads = run(x), grads_of(run, x, names)
    monkeypatch.setattr(decay, "CPU_BLOCK_ELEMENTS", block_elements)
    assert_pair_close(run(x), want, **TIGHT)
    for got, expected in zip(grads_of(run, x, names), want_grads):
        assert_close(got, expected, **TIGHT)


@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("n", [1, 37, 130])
def test_row_sums_equal_a_ones_column_of_the_values(n, chunk):
    """``row_sums`` carries the decayed key sum as a last state column and returns ``q . z`` as
    a last output column: exactly what a ones column appended to the values gives."""
    gen = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(2, 3, n, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    log_gamma = -torch.rand(3, generator=gen, dtype=torch.float64)
    start = torch.randn(2, 3, 8, 9, generator=gen, dtype=torch.float64)
    ones = torch.cat([v, torch.ones(2, 3, n, 1, dtype=torch.float64)], dim=-1)
    want, want_state = decay_naive.decay_attention(q, k, ones, log_gamma, state=start)
    got, got_state = decay.decay_attention(q, k, v, log_gamma, chunk, state=start, row_sums=True)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    assert torch.allclose(got_state, want_state, rtol=1e-10, atol=1e-12)
