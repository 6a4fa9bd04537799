"""Rows of the training experiment: diverged, unsupported and misconfigured points; the loop."""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch

import variants
from harness.train.experiment import describe_row, measure_train_point, train_config, train_point
from harness.train.loop import LoopConfig, lr_at
from harness.train.model import ModelConfig, TinyTransformer, parameter_counts
from variants.base import AttentionVariant

N, HEAD_DIM = 16, 16
SMALL = {"steps": 12, "batch": 4, "eval_every": 4, "warmup": 2, "target": None,
         "mqar": {"vocab": 16, "num_pairs": 2, "eval_examples": 8}}  # fmt: skip


def _point(name: str, causal: bool = True, **train) -> dict:
    return train_point(name, N, HEAD_DIM, SMALL | train, causal=causal, memory=False)


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
    (row,) = measure_train_point(_point("nan_after"), lambda seed: NaNAfter(fail_at=5))
    assert row["status"] == "nan"
    assert row["nan_step"] == 5 and row["steps_run"] == 5
    assert "step 5" in row["reason"]
    assert row["curve"][0][0] == 0, "the evaluations before the NaN are kept"


def test_a_bidirectional_only_variant_on_causal_mqar_is_unsupported(one_thread):
    (row,) = measure_train_point(_point("linformer"), _factory("linformer", k=4))
    assert row["status"] == "unsupported"
    assert "causal" in row["reason"]
    assert row["knob"] == "k" and row["knob_value"] == 4 and row["params"]["k"] == 4
    (row,) = measure_train_point(_point("linformer", causal=False), _factory("linformer", k=4))
    assert row["status"] == "ok", row["reason"]
    assert row["task_params"]["form"] == "bidirectional"


def test_character_modelling_is_causal_only(one_thread):
    (row,) = measure_train_point(_point("sdpa", causal=False, task="chars"), _factory("sdpa"))
    assert row["status"] == "unsupported" and "causal" in row["reason"]


def test_character_row_reports_bits_per_character(one_thread):
    point = _point("sdpa", task="chars", steps=4, chars={"eval_chars": 256})
    (row,) = measure_train_point(point, _factory("sdpa"))
    assert row["status"] == "ok", row["reason"]
    assert row["metric"] == "bpc" and row["final_bpc"] == row["final_eval"]
    assert 0 < row["final_bpc"] < 2 * row["chance"]  # chance: log2(alphabet size)
    assert row["steps_to_50"] is None and row["steps_run"] == 4, "no early stop for chars"
    assert row["train_task"] == "chars" and row["task"] == "train" and row["pass"] == "train"


@pytest.mark.parametrize(
    "train, field",
    [({"task": "copy"}, "task"), ({"lr": 0}, "lr"), ({"steps": 0}, "steps"), ({"lrs": 1}, "lrs")],
)
def test_bad_train_blocks_are_error_rows_naming_the_field(train, field):
    (row,) = measure_train_point(_point("sdpa", **train), _factory("sdpa"))
    assert row["status"] == "error" and field in row["reason"]
    with pytest.raises(ValueError, match=field):
        train_config({"train": train})


def test_a_bad_task_parameter_is_an_error_row():
    (row,) = measure_train_point(_point("sdpa", mqar={"num_pairs": 20}), _factory("sdpa"))
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
