"""Rows of the training experiment: diverged, unsupported and misconfigured points; the loop."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import ClassVar

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import variants
from harness.app.main import CONF_DIR
from harness.app.point import Point
from harness.measure.config import ConfigError
from harness.tasks.train.config import MqarConfig, TrainConfig
from harness.tasks.train.loop import LoopConfig, lr_at
from harness.tasks.train.measure import describe_row, measure, train_point
from harness.tasks.train.model import ModelConfig, TinyTransformer, parameter_counts
from variants.base import AttentionVariant

N, HEAD_DIM = 16, 16
SMALL = {"steps": 12, "batch": 4, "eval_every": 4, "warmup": 2, "target": None,
         "mqar": {"vocab": 16, "num_pairs": 2, "eval_examples": 8}}  # fmt: skip


def _point(name, causal: bool = True, **train):
    return train_point(name, N, HEAD_DIM, SMALL | train, causal=causal, memory=False)


def _measure(point, factory) -> list[dict]:
    return measure(point, factory, None)


def _factory(name: str, **params):
    return lambda seed: variants.create(name, kv_len=N, head_dim=HEAD_DIM, **params)


class NaNAfter(AttentionVariant):
    """Exact attention until its ``fail_at``-th training call, NaN from then on."""

    name: ClassVar[str] = "nan_after"
    exact: ClassVar[bool] = False

    def __init__(self, fail_at: int = 5, kv_len=None, head_dim=None, scale=None) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim, scale=scale)
        self.fail_at, self.calls = fail_at, 0

    def forward(self, q, k, v, causal=False):
        self.calls += int(self.training)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return out * math.nan if self.calls >= self.fail_at else out

    def flops(self, batch, heads, q_len, kv_len, head_dim, causal):
        return 4 * batch * heads * q_len * kv_len * head_dim


def test_a_diverging_run_is_a_nan_row_with_its_step(one_thread):
    (row,) = _measure(_point(NaNAfter), lambda seed: NaNAfter(fail_at=5))
    assert row["status"] == "nan"
    assert row["nan_step"] == 5 and row["steps_run"] == 5
    assert "step 5" in row["reason"]
    assert row["curve"][0][0] == 0, "the evaluations before the NaN are kept"


def test_a_bidirectional_only_variant_on_causal_mqar_is_unsupported(one_thread):
    (row,) = _measure(_point("linformer"), _factory("linformer", k=4))
    assert row["status"] == "unsupported"
    assert "causal" in row["reason"]
    assert row["knob"] == "k" and row["knob_value"] == 4 and row["params"]["k"] == 4
    (row,) = _measure(_point("linformer", causal=False), _factory("linformer", k=4))
    assert row["status"] == "ok", row["reason"]
    assert row["task_params"]["form"] == "bidirectional"


def test_character_modelling_is_causal_only(one_thread):
    (row,) = _measure(_point("sdpa", causal=False, task="chars"), _factory("sdpa"))
    assert row["status"] == "unsupported" and "causal" in row["reason"]


def test_character_row_reports_bits_per_character(one_thread):
    point = _point("sdpa", task="chars", steps=4, chars={"eval_chars": 256})
    (row,) = _measure(point, _factory("sdpa"))
    assert row["status"] == "ok", row["reason"]
    assert row["metric"] == "bpc" and row["final_bpc"] == row["final_eval"]
    assert 0 < row["final_bpc"] < 2 * row["chance"]  # chance: log2(alphabet size)
    assert row["steps_to_50"] is None and row["steps_run"] == 4, "no early stop for chars"
    assert row["train_task"] == "chars" and row["task"] == "train" and row["pass"] == "train"


@pytest.mark.parametrize(
    "train, field",
    [
        ({"task": "copy"}, "train.task='copy'"),
        ({"lr": 0}, "train.lr=0"),
        ({"steps": 0}, "train.steps=0"),
        ({"warmup": -1}, "train.warmup=-1"),
        ({"grad_clip": -1.0}, "train.grad_clip=-1.0"),
        ({"mqar": {"vocab": 16, "num_pairs": 20}}, "train.mqar.num_pairs=20"),
        ({"mqar": {"vocab": 15}}, "train.mqar.vocab=15"),
        ({"mqar": {"power_a": 0}}, "train.mqar.power_a=0"),
        ({"chars": {"eval_chars": 0}}, "train.chars.eval_chars=0"),
    ],
)
def test_bad_train_blocks_raise_a_config_error_naming_the_field(train, field):
    with pytest.raises(ConfigError, match=re.escape(field)) as caught:
        TrainConfig(**train)
    assert "\n" not in str(caught.value), "one line"
    with pytest.raises(ConfigError, match=re.escape(field)):
        _point("sdpa", **train)


def test_an_unknown_train_key_is_rejected():
    with pytest.raises(TypeError, match="lrs"):
        TrainConfig(lrs=1)


def test_the_train_blocks_defaults_are_the_dataclass_fields():
    cfg = TrainConfig(mqar={"vocab": 16})
    assert cfg.mqar == MqarConfig(vocab=16) and cfg.mqar.num_pairs == MqarConfig().num_pairs
    assert cfg.lr == 3e-3 and cfg.task == "mqar" and cfg.chars.eval_chars == 32768


def _preset(*overrides: str, experiment: str = "train") -> Point:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "config", overrides=[f"+experiment={experiment}", "variant=sdpa", *overrides]
        )
    return Point.from_cfg(cfg)


def test_the_presets_compose_into_the_typed_train_block():
    cfg = _preset().task_cfg
    assert isinstance(cfg, TrainConfig) and isinstance(cfg.mqar, MqarConfig)
    assert (cfg.task, cfg.steps, cfg.chars.eval_chars) == ("mqar", 2000, 16384)
    chars = _preset("train_setting=chars_64")
    assert (chars.task_cfg.task, chars.task_cfg.steps, chars.q_len) == ("chars", 4000, 64)
    assert chars.task_cfg.chars.eval_chars == 8192 and chars.task_cfg.batch == 32
    assert _preset("train_setting=mqar_128_8").task_cfg.mqar.num_pairs == 8
    # the example's characters: chars_64 over the 8000-step whole cosine, nothing else changed
    long = _preset("train_setting=chars_64_long", experiment="train_full")
    assert (long.task_cfg.steps, long.task_cfg.min_steps) == (8000, 8000)
    assert dataclasses.replace(long.task_cfg, steps=4000, min_steps=4000) == chars.task_cfg
    assert (long.q_len, long.causal) == (chars.q_len, chars.causal)
    gpu = _preset("device=cpu", experiment="train_gpu").task_cfg
    assert (gpu.steps, gpu.mqar.vocab, gpu.mqar.eval_examples) == (20000, 8192, 3000)


def test_a_bad_train_value_stops_the_point_before_any_work():
    with pytest.raises(ConfigError, match=re.escape("train.lr=0")):
        _preset("train.lr=0")
    with pytest.raises(ConfigError, match=re.escape("train.mqar.num_pairs=200")):
        _preset("train.mqar.num_pairs=200")


def test_a_task_parameter_that_does_not_fit_the_length_is_an_error_row():
    # 7 pairs fill 14 of the 16 positions: one query slot is left for 7 queries
    (row,) = _measure(_point("sdpa", mqar={"num_pairs": 7}), _factory("sdpa"))
    assert row["status"] == "error" and "num_pairs" in row["reason"]


def test_learned_projections_are_counted_apart(one_thread):
    cfg = ModelConfig(vocab=16, seq_len=N, width=HEAD_DIM, heads=1, layers=2)
    exact = parameter_counts(TinyTransformer(cfg, lambda i: _factory("sdpa")(i)))
    learned = _factory("linformer", k=4, init="learned")
    counts = parameter_counts(TinyTransformer(cfg, lambda i: learned(i)))
    assert counts["n_variant_params"] == 2 * 2 * 4 * N  # 2 layers x (E_K, E_V) of k x kv_len
    assert counts["n_params"] - exact["n_params"] == counts["n_variant_params"]
    assert counts["n_attention_params"] - exact["n_attention_params"] == 2 * 2 * 4 * N


def test_learning_rate_warms_up_then_decays_by_cosine_to_the_floor():
    cfg = LoopConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(1, cfg) == pytest.approx(0.1) and lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)  # half way down the cosine
    assert lr_at(100, cfg) == pytest.approx(0.1)
    rates = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_describe_row_is_one_line():
    row = {"status": "ok", "train_task": "mqar", "q_len": 64, "lr": 3e-3, "final_eval": 0.99,
           "best_eval": 0.99, "metric": "accuracy", "steps_run": 400, "time_ms": 21.5}  # fmt: skip
    assert (
        describe_row(row)
        == "mqar n=64 lr=0.003: accuracy 0.99 (best 0.99) in 400 steps, 21.5 ms/step"
    )
    assert "unsupported" in describe_row({"status": "unsupported", "reason": "no causal form"})
