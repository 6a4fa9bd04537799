"""Input generators: shapes, seeding, no zeros, and that each one has the structure it promises."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from harness.measure.inputs import GENERATOR_PARAMS, INPUT_GENERATORS, make_inputs

SYNTHETIC = [name for name in INPUT_GENERATORS if name != "minilm"]
SHAPE = (2, 3, 40, 56, 16)  # batch, heads, q_len, kv_len, head_dim (cross on purpose)


# Tiny tensors: one thread avoids OpenMP spin-waiting on a shared, loaded machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def _probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    scores = q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1)


def _entropy(p: torch.Tensor) -> float:
    return float(-(p * p.clamp_min(1e-300).log()).sum(-1).mean())


@pytest.mark.parametrize("name", SYNTHETIC)
def test_shape_dtype_seed_no_zeros(name):
    b, h, nq, nk, d = SHAPE
    q, k, v = make_inputs(name, *SHAPE, torch.float16, "cpu", seed=3)
    assert q.shape == (b, h, nq, d) and k.shape == (b, h, nk, d) and v.shape == (b, h, nk, d)
    assert all(t.dtype == torch.float16 and torch.isfinite(t).all() for t in (q, k, v))
    assert all((t != 0).float().mean() > 0.99 for t in (q, k, v))
    again = make_inputs(name, *SHAPE, "float16", "cpu", seed=3)
    other = make_inputs(name, *SHAPE, torch.float16, "cpu", seed=4)
    for a, b_, c in zip((q, k, v), again, other):
        assert torch.equal(a, b_)
        assert not torch.equal(a, c)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_global_rng_untouched(name):
    state = torch.random.get_rng_state()
    make_inputs(name, *SHAPE, torch.float32, "cpu", seed=0)
    assert torch.equal(state, torch.random.get_rng_state())


def test_gaussian_temperature_sets_logit_scale_and_entropy():
    q, k, _ = make_inputs("gaussian", 1, 4, 256, 256, 64, torch.float64, "cpu", 0, temperature=3)
    logits = q @ k.transpose(-2, -1) / 8.0
    assert abs(float(logits.std()) - 3.0) < 0.1
    entropies = [
        _entropy(
            _probs(
                *make_inputs(
                    "gaussian", 1, 4, 256, 256, 64, torch.float64, "cpu", 0, temperature=t
                )[:2]
            )
        )  # fmt: skip
        for t in (0.1, 1.0, 10.0)
    ]
    assert entropies[0] > entropies[1] > entropies[2]
    assert entropies[0] > 0.99 * math.log(256)  # nearly uniform
    assert entropies[2] < 0.5 * math.log(256)  # sharply peaked


def test_local_concentrates_near_diagonal():
    n, bandwidth = 256, 8.0
    q, k, _ = make_inputs("local", 1, 2, n, n, 64, torch.float64, "cpu", 0, bandwidth=bandwidth)
    p = _probs(q, k)
    dist = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs()
    near = float((p * (dist <= 3 * bandwidth)).sum(-1).mean())
    q, k, _ = make_inputs("gaussian", 1, 2, n, n, 64, torch.float64, "cpu", 0)
    near_gaussian = float((_probs(q, k) * (dist <= 3 * bandwidth)).sum(-1).mean())
    assert near > 0.8 > near_gaussian


def test_local_cross_attention_is_bottom_right_aligned():
    q, k, _ = make_inputs("local", 1, 1, 32, 128, 64, torch.float64, "cpu", 0, bandwidth=4.0)
    # The peak of query i sits at key i + (128 - 32).
    argmax = _probs(q, k)[0, 0].argmax(-1)
    assert float((argmax - (torch.arange(32) + 96)).abs().float().median()) <= 4


def test_lowrank_has_the_rank_asked_for():
    q, k, v = make_inputs("lowrank", 1, 2, 64, 64, 32, torch.float64, "cpu", 0, rank=5)
    assert int(torch.linalg.matrix_rank(q[0, 0])) == 5
    assert int(torch.linalg.matrix_rank(k[0, 1])) == 5
    assert int(torch.linalg.matrix_rank(q[0, 0] @ k[0, 0].T)) == 5
    assert int(torch.linalg.matrix_rank(v[0, 0])) == 32


def test_unknown_generator_names_field_and_choices():
    with pytest.raises(ValueError, match="unknown generator 'uniform'.*gaussian, local"):
        make_inputs("uniform", *SHAPE, torch.float32, "cpu", 0)


@pytest.mark.parametrize("name", INPUT_GENERATORS)
def test_unknown_param_names_field_and_allowed(name):
    allowed = ", ".join(GENERATOR_PARAMS[name])
    with pytest.raises(ValueError, match=f"unknown parameter 'bogus'; allowed: {allowed}"):
        make_inputs(name, *SHAPE, torch.float32, "cpu", 0, bogus=1)


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("gaussian", {"temperature": 0}, "temperature"),
        ("local", {"bandwidth": -1}, "bandwidth"),
        ("local", {"noise": -0.5}, "noise"),
        ("lowrank", {"rank": 17}, "rank"),
        ("lowrank", {"rank": 2.5}, "rank"),
    ],
)
def test_bad_values_name_the_field(name, params, field):
    with pytest.raises(ValueError, match=field):
        make_inputs(name, *SHAPE, torch.float32, "cpu", 0, **params)


@pytest.mark.skipif(
    importlib.util.find_spec("harness.realmodel.capture") is None,
    reason="harness.realmodel.capture not present",
)
def test_minilm_is_dispatched_lazily(monkeypatch):
    import harness.realmodel.capture

    seen = {}

    def fake(batch, heads, q_len, kv_len, head_dim, dtype, device, seed, **kw):
        seen.update(kw, seed=seed)
        return make_inputs("gaussian", batch, heads, q_len, kv_len, head_dim, dtype, device, seed)

    monkeypatch.setattr(harness.realmodel.capture, "minilm_qkv", fake)
    q, _, _ = make_inputs("minilm", 1, 2, 8, 8, 16, torch.float32, "cpu", 5, layer=2)
    assert q.shape == (1, 2, 8, 16)
    assert seen == {"layer": 2, "head": None, "text": None, "seed": 5}
