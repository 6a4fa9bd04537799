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
        ("structured", {"bandwidth": 0}, "bandwidth"),
        ("structured", {"shift": 0.5}, "shift"),
        ("structured", {"gain": [1.0, -1.0]}, "gain"),
        ("structured", {"sink": []}, "sink"),
        ("structured", {"v_mean": 1.0}, "v_mean"),
        ("structured", {"temperature": "hot"}, "temperature"),
    ],
)
def test_bad_values_name_the_field(name, params, field):
    with pytest.raises(ValueError, match=field):
        make_inputs(name, *SHAPE, torch.float32, "cpu", 0, **params)


@pytest.mark.skipif(
    importlib.util.find_spec("harness.minilm.capture") is None,
    reason="harness.minilm.capture not present",
)
def test_minilm_is_dispatched_lazily(monkeypatch):
    import harness.minilm.capture

    seen = {}

    def fake(batch, heads, q_len, kv_len, head_dim, dtype, device, seed, **kw):
        seen.update(kw, seed=seed)
        return make_inputs("gaussian", batch, heads, q_len, kv_len, head_dim, dtype, device, seed)

    monkeypatch.setattr(harness.minilm.capture, "minilm_qkv", fake)
    q, _, _ = make_inputs("minilm", 1, 2, 8, 8, 16, torch.float32, "cpu", 5, layer=2)
    assert q.shape == (1, 2, 8, 16)
    assert seen == {"layer": 2, "head": None, "text": None, "seed": 5}


#: ``structured`` with every term switched off: tests switch on the one they check.
_OFF = {"bandwidth": 2.0, "shift": 0, "gain": 0.0, "sink": 0.0, "temperature": 0.0}


def _structured_qk(nq: int, nk: int, heads: int = 2, batch: int = 1, seed: int = 0, **params):
    """q, k (float64, head_dim 32) of ``structured`` with every term off but ``params``."""
    shape = (batch, heads, nq, nk, 32)
    q, k, _ = make_inputs("structured", *shape, torch.float64, "cpu", seed, **{**_OFF, **params})
    return q, k


def _structured(n: int = 64, heads: int = 2, **params) -> torch.Tensor:
    """Attention probabilities (B=1, H, n, n) of ``structured`` with the given parameters."""
    return _probs(*_structured_qk(n, n, heads, **params))


def test_structured_terms_do_what_they_say():
    n = 64
    # gain alone, shift 1: every query (but the first) attends to the token before it
    p = _structured(n, gain=40.0, shift=1, bandwidth=0.5)
    assert torch.equal(p[0, :, 1:].argmax(-1), torch.arange(n - 1).expand(2, -1))
    # nothing switched on: exactly uniform attention
    assert torch.allclose(_structured(n), torch.full((1, 2, n, n), 1 / n, dtype=torch.float64))
    # sink alone: key 0 gets e^s / (e^s + n - 1) of every row
    p = _structured(n, sink=3.0)
    expected = math.exp(3.0) / (math.exp(3.0) + n - 1)
    assert torch.allclose(p[..., 0], torch.full_like(p[..., 0], expected))
    # temperature alone: logits of standard deviation ~ temperature, no positional structure
    q, k = _structured_qk(128, 128, heads=4, batch=2, seed=1, temperature=2.0)
    assert abs(float((q @ k.transpose(-2, -1) / math.sqrt(32)).std()) - 2.0) < 0.15


def test_structured_lists_give_one_value_per_head_type():
    # head h takes element h mod 2: heads 0 and 2 sharp and local, heads 1 and 3 uniform
    p = _structured(48, heads=4, gain=[40.0, 0.0], bandwidth=0.5)
    diag = p[0].diagonal(dim1=-2, dim2=-1).mean(-1)  # (H,)
    assert float(diag[0]) > 0.9 and float(diag[2]) > 0.9
    assert torch.allclose(diag[1::2], torch.full((2,), 1 / 48, dtype=torch.float64))


def test_structured_cross_attention_is_bottom_right_aligned():
    q, k = _structured_qk(16, 80, heads=1, gain=40.0, bandwidth=0.5)
    assert torch.equal(_probs(q, k)[0, 0].argmax(-1), torch.arange(16) + 64)


def test_structured_values_share_a_mean():
    _, _, v = make_inputs("structured", 1, 2, 8, 4096, 32, torch.float64, "cpu", 0, v_mean=0.3)
    fraction = v.mean(-2).pow(2).sum(-1) / v.pow(2).sum(-1).mean(-1)  # (B, H)
    assert torch.allclose(fraction, torch.full_like(fraction, 0.3), atol=0.12)
    assert abs(float(v.std()) - 1.0) < 0.1  # still unit variance entries
