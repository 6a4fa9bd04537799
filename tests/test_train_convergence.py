"""Budgets set by convergence: the plateau rule, the cap, the schedule, and the rows' record.

The loop is driven with a scripted evaluation (a one-weight model whose evaluation returns the
next value of a given curve), so each case runs in milliseconds.
"""

from __future__ import annotations

import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import variants
from harness.app.main import CONF_DIR
from harness.app.point import Point
from harness.measure.config import ConfigError
from harness.tasks.train.config import TrainConfig
from harness.tasks.train.loop import LoopConfig, lr_at, on_trivial_plateau, plateaued, train
from harness.tasks.train.measure import _loop_config, measure, train_point

N, HEAD_DIM = 16, 16
SMALL = {"steps": 12, "batch": 4, "eval_every": 4, "warmup": 2, "target": None,
         "mqar": {"vocab": 16, "num_pairs": 2, "eval_examples": 8}}  # fmt: skip


def _scripted(values, cfg: LoopConfig):
    """Train a one-weight model whose evaluations are ``values`` in turn (step 0 first)."""
    model = torch.nn.Linear(1, 1)
    script = iter(values)

    def next_batch(step):
        return torch.ones(2, 1), torch.zeros(2, 1)

    def loss_of(m, batch):
        return ((m(batch[0]) - batch[1]) ** 2).mean()

    result = train(model, next_batch, loss_of, lambda m: next(script), cfg)
    return result, result.optimizer.param_groups[0]["lr"]


def _cfg(**kw) -> LoopConfig:
    base = dict(steps=100, lr=1.0, warmup=0, eval_every=10, plateau_delta=0.01)
    return LoopConfig(**(base | kw))


def test_a_flat_curve_stops_on_the_plateau_and_counts_as_converged():
    flat = [0.0, 0.25] + [0.25 + 0.001 * (i % 2) for i in range(30)]
    result, _ = _scripted(flat, _cfg(min_steps=40, plateau_window=0.3))
    assert result.stop_reason == "plateau" and result.converged
    assert result.steps_run == 40, "the first evaluation from min_steps on with a flat window"
    # before min_steps a flat curve is a plateau the model may still leave: no stop
    result, _ = _scripted(flat, _cfg(min_steps=70, plateau_window=0.3))
    assert result.stop_reason == "plateau" and result.steps_run == 70


def test_a_curve_on_the_trivial_plateau_is_not_stopped_before_the_cap():
    # flat at 1/pairs = 0.25 (the trivial solution): min_steps alone would stop it at step 40
    flat = [0.0, 0.25] + [0.25 + 0.004 * (i % 3) for i in range(30)]
    result, _ = _scripted(flat, _cfg(min_steps=40, plateau_window=0.3, trivial=0.25))
    assert result.steps_run == 100, "on the trivial plateau only the cap stops the arm"
    assert result.stop_reason == "plateau", (
        "flat over the cap's last window: converged by the rule"
    )
    # the same flat curve once above the trivial value by two deltas stops as before
    high = [0.0, 0.25] + [0.4 + 0.001 * (i % 2) for i in range(30)]
    result, _ = _scripted(high, _cfg(min_steps=40, plateau_window=0.3, trivial=0.25))
    assert (result.stop_reason, result.steps_run) == ("plateau", 40)
    # a late escape (the case that motivated the rule) is seen: 0.25 until step 70, then learns
    late = [0.0] + [0.25] * 7 + [0.6, 0.9, 0.995]
    result, _ = _scripted(late, _cfg(min_steps=40, plateau_window=0.3, trivial=0.25, target=0.99))
    assert (result.stop_reason, result.steps_run) == ("target", 100)


def test_the_trivial_plateau_reads_direction_and_margin():
    cfg = _cfg(trivial=0.25, plateau_delta=0.01)
    assert on_trivial_plateau([[0, 0.0], [10, 0.25], [20, 0.2699]], cfg)
    assert not on_trivial_plateau([[0, 0.0], [10, 0.25], [20, 0.27]], cfg)
    assert not on_trivial_plateau([[0, 0.0], [10, 0.25]], _cfg(plateau_delta=0.01))  # none set
    assert on_trivial_plateau([[0, 0.9]], cfg), "step 0 (untrained) does not count"
    lower = _cfg(trivial=8.0, plateau_delta=0.05, higher_is_better=False)  # bits per char
    assert on_trivial_plateau([[0, 9.0], [10, 7.95]], lower)
    assert not on_trivial_plateau([[0, 9.0], [10, 7.9]], lower)


def test_a_rising_curve_runs_to_the_cap_and_is_not_converged():
    rising = [0.01 * i for i in range(12)]  # +0.01 per evaluation: 0.03 over the last 30%
    result, _ = _scripted(rising, _cfg(min_steps=0, plateau_window=0.3))
    assert result.stop_reason == "cap" and not result.converged
    assert result.steps_run == 100 and result.curve[-1][0] == 100, "the cap is respected"
    assert len(result.curve) == 11


def test_the_target_stops_first_and_a_flat_end_at_the_cap_is_a_plateau():
    result, _ = _scripted([0.0, 0.5, 0.995, 0.1], _cfg(target=0.99))
    assert (result.stop_reason, result.steps_run, result.converged) == ("target", 20, True)
    late = [0.0] + [0.1 * i for i in range(1, 8)] + [0.7, 0.7, 0.7]  # flat from step 70
    result, _ = _scripted(late, _cfg(plateau_window=0.3))
    assert (result.stop_reason, result.steps_run) == ("plateau", 100)


def test_bits_per_char_plateau_reads_lower_as_better():
    falling = [6.0, 4.0, 3.5, 3.2, 3.0, 2.9, 2.8, 2.7, 2.6, 2.5, 2.4]
    result, _ = _scripted(falling, _cfg(higher_is_better=False))
    assert result.stop_reason == "cap"
    flat = [6.0, 3.0, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5]
    result, _ = _scripted(flat, _cfg(higher_is_better=False))
    assert result.stop_reason == "plateau" and result.steps_run < 100


def test_plateau_rule_compares_the_last_window_with_what_came_before():
    cfg = _cfg(plateau_window=0.5)
    curve = [[0, 0.0], [10, 0.2], [20, 0.25], [30, 0.255], [40, 0.252]]
    assert plateaued(curve, cfg)  # window (20, 40]: best 0.255 against 0.25 before
    assert not plateaued(curve[:-1] + [[40, 0.3]], cfg)
    assert not plateaued(curve, _cfg(plateau_window=0.5, plateau_delta=None))
    assert not plateaued(curve, _cfg(plateau_window=0.5, min_steps=50))


def test_the_schedule_follows_the_cap_not_the_stop():
    cfg = _cfg(steps=2000, lr=1.0, warmup=50, min_lr_ratio=0.1)
    assert lr_at(600, cfg) > 0.8, "at step 600 of a 2000-step cap the rate is still high"
    assert lr_at(2000, cfg) == pytest.approx(0.1)
    flat = [0.0] + [0.25] * 60
    result, last_lr = _scripted(flat, _cfg(steps=400, warmup=0, min_steps=100, lr=1.0))
    assert result.stop_reason == "plateau" and result.steps_run < 400
    assert last_lr == pytest.approx(lr_at(result.steps_run, _cfg(steps=400, warmup=0, lr=1.0)))
    assert last_lr > 0.5, "stopped on the plateau with the cosine still high (it ends at the cap)"


def _measure(**train):
    factory = lambda seed: variants.create("sdpa", kv_len=N, head_dim=HEAD_DIM)
    point = train_point("sdpa", N, HEAD_DIM, SMALL | train, memory=False)
    (row,) = measure(point, factory, None)
    assert row["status"] == "ok", row["reason"]
    return row


def test_rows_record_convergence_the_budget_and_the_plateau_level(one_thread):
    row = _measure(plateau_delta=None)
    assert row["stop_reason"] == "cap" and row["converged"] is False
    assert row["steps"] == 12 and row["steps_run"] == 12
    assert row["plateau"] == pytest.approx(1 / 2), "MQAR's trivial level: 1 / pairs"
    assert row["chance"] == pytest.approx(1 / 8)
    row = _measure(target=0.0)
    assert row["stop_reason"] == "target" and row["converged"] is True and row["steps_run"] == 4
    row = _measure(plateau_delta=10.0, min_steps=8, plateau_window=0.5, eval_every=2)
    # a delta of 10 keeps every curve within two deltas of 1/pairs: the trivial plateau, which
    # only the cap ends (flat there: plateau); without the trivial level it stops at min_steps
    assert row["stop_reason"] == "plateau" and row["converged"] is True and row["steps_run"] == 12
    loop = _loop_config(TrainConfig(**(SMALL | {"plateau_delta": 10.0})), "accuracy", None)
    assert loop.trivial is None and _loop_config(TrainConfig(), "accuracy", 0.5).trivial == 0.5
    assert (row["min_steps"], row["plateau_window"], row["plateau_delta"]) == (8, 0.5, 10.0)
    # the state size: keys and values of all 16 positions, 2 layers, 1 head, float32
    assert row["state_bytes"] == 2 * N * HEAD_DIM * 2 * 4


@pytest.mark.parametrize(
    "train, field",
    [
        ({"plateau_window": 1.0}, "train.plateau_window=1.0"),
        ({"plateau_window": 0}, "train.plateau_window=0"),
        ({"plateau_delta": -0.1}, "train.plateau_delta=-0.1"),
        ({"min_steps": 20, "steps": 10}, "train.min_steps=20"),
    ],
)
def test_bad_convergence_settings_name_the_field(train, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        TrainConfig(**train)


def _preset(*overrides: str) -> Point:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=train", "variant=sdpa", *overrides])
    return Point.from_cfg(cfg)


@pytest.mark.parametrize("setting", ["mqar_64", "chars_64"])
def test_the_preset_caps_are_several_times_what_exact_attention_needs(setting):
    cfg = _preset(f"train_setting={setting}").task_cfg
    # exact attention reaches 0.99 on mqar_64 by ~350 steps; chars is at 3.0 bits by ~1000
    needs = {"mqar_64": 350, "chars_64": 1000}[setting]
    assert cfg.steps >= 3 * needs
    assert cfg.plateau_delta is not None and cfg.min_steps >= needs
    if setting == "chars_64":  # judged at the end of the cosine: no stop at a high rate
        assert cfg.min_steps == cfg.steps
