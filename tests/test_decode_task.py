"""The decode task and grouped heads, in process: config checks, rows, unsupported variants.

A toy variant (an exact KV cache written in a few lines, with grouped heads repeated by the
base class) stands in for the built-ins where a test is about the harness, not a variant.
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from harness.app.main import CONF_DIR
from harness.app.point import ConfigError, Point
from harness.measure.config import MeasureConfig
from harness.measure.inputs import make_inputs
from harness.measure.reference import reference_attention, repeat_kv
from harness.tasks.attention.measure import measure as measure_attention
from harness.tasks.decode.config import DecodeConfig
from harness.tasks.decode.measure import measure as measure_decode
from variants.base import AttentionVariant, DecodeState, causal_mask


class ToyCache(AttentionVariant):
    """Exact attention with a concatenating KV cache (the test's decode form)."""

    name: ClassVar[str] = "toy_cache"
    exact: ClassVar[bool] = True
    supports_decode: ClassVar[bool] = True
    gqa: ClassVar[str] = "repeat"

    def forward(self, q, k, v, causal=False):
        scores = q @ k.transpose(-2, -1) * self.softmax_scale(q.shape[-1])
        if causal:
            mask = causal_mask(q.shape[-2], k.shape[-2], q.device)
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(-1) @ v

    def flops(self, batch, heads, q_len, kv_len, head_dim, causal, kv_heads=None):
        return 4 * batch * heads * q_len * kv_len * head_dim

    def prefill(self, q, k, v, max_len=None):
        return self(q, k, v, causal=True), DecodeState({"k": k, "v": v}, k.shape[-2])

    def step(self, q, k, v, state):
        state["k"] = torch.cat([state["k"], k], dim=2)
        state["v"] = torch.cat([state["v"], v], dim=2)
        state.length += q.shape[-2]
        return self(q, state["k"], state["v"], causal=True), state

    def state_bytes(self, batch, kv_heads, context_len, head_dim, element_size=4, heads=None):
        return 2 * batch * kv_heads * context_len * head_dim * element_size

    def step_read_bytes(
        self, batch, heads, kv_heads, context_len, head_dim, q_tokens=1, element_size=4
    ):
        return self.state_bytes(batch, kv_heads, context_len, head_dim, element_size)


class ToyNoDecode(ToyCache):
    name: ClassVar[str] = "toy_plain"
    supports_decode: ClassVar[bool] = False
    no_decode_reason: ClassVar[str] = "no streaming form (the toy says so)"


class ToyNoGroups(ToyCache):
    name: ClassVar[str] = "toy_nogroups"
    gqa: ClassVar[str] = "unsupported"


class WrongStep(ToyCache):
    """A step that forgets the new token's key and value (a wrong state update)."""

    name: ClassVar[str] = "toy_wrong"

    def step(self, q, k, v, state):
        state.length += q.shape[-2]
        return self(q, state["k"], state["v"], causal=False), state


def _point(cls, task="decode", kv_len=48, heads=4, kv_heads=2) -> Point:
    cfg = DecodeConfig(steps=3, warmup=1, model_depth=1, model_mlp_ratio=2)
    return Point(
        variant_cls=cls, task=task, variant=cls.name, params={}, batch=1, heads=heads,
        q_len=kv_len, kv_len=kv_len, head_dim=8, dtype="float32", device="cpu", causal=True,
        inputs="gaussian", inputs_params={}, seed=0, seeds=[0], passes=["fwd"],
        measure=MeasureConfig(min_run_time=0.01, timing=task == "decode", memory=False, threads=1),
        task_cfg=cfg if task == "decode" else None, kv_heads=kv_heads,
    )  # fmt: skip


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


# ------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["heads=8", "kv_heads=3"], "kv_heads=3 must divide heads=8"),
        (["task=decode", "decode.steps=0"], "decode.steps=0 must be an integer >= 1"),
        (["task=decode", "decode.q_tokens=5"], "decode.q_tokens=5 must be an integer in 1..4"),
        (
            ["task=decode", "seq_len=128", "decode.cache_len=100"],
            "decode.cache_len=100 is shorter than the prompt (kv_len=128) plus the 36 generated",
        ),
    ],
)
def test_bad_decode_settings_name_the_field(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Point.from_cfg(_compose(overrides))


def test_kv_heads_defaults_to_heads_and_keeps_point_ids() -> None:
    plain = Point.from_cfg(_compose(["heads=4"]))
    same = Point.from_cfg(_compose(["heads=4", "kv_heads=4"]))
    grouped = Point.from_cfg(_compose(["heads=4", "kv_heads=2"]))
    assert plain.kv_heads == 4 and grouped.kv_heads == 2
    assert plain.point_id() == same.point_id() != grouped.point_id()
    decode = Point.from_cfg(_compose(["task=decode", "seq_len=256", "decode.cache_len=300"]))
    assert decode.task_cfg.cache_for(256) == 300


# ----------------------------------------------------------------- inputs and reference
def test_grouped_inputs_keep_the_first_head_of_each_group() -> None:
    full = make_inputs("gaussian", 1, 4, 8, 8, 8, "float32", "cpu", 3)
    q, k, v = make_inputs("gaussian", 1, 4, 8, 8, 8, "float32", "cpu", 3, kv_heads=2)
    assert q.shape == (1, 4, 8, 8) and k.shape == v.shape == (1, 2, 8, 8)
    assert torch.equal(q, full[0]) and torch.equal(k, full[1][:, ::2])
    with pytest.raises(ValueError, match="kv_heads=3 must divide heads=4"):
        make_inputs("gaussian", 1, 4, 8, 8, 8, "float32", "cpu", 3, kv_heads=3)


def test_reference_repeats_each_kv_head_for_its_group() -> None:
    q, k, v = make_inputs("gaussian", 1, 4, 6, 6, 8, "float64", "cpu", 0, kv_heads=2)
    out = reference_attention(q, k, v, causal=True)
    for h in range(4):  # query head h reads key/value head h // 2
        g = slice(h // 2, h // 2 + 1)
        assert torch.allclose(
            out[:, h : h + 1], reference_attention(q[:, h : h + 1], k[:, g], v[:, g], True)
        )
    assert torch.equal(repeat_kv(k, 4)[:, 1], k[:, 0])


# ------------------------------------------------------------------- the decode task
def test_decode_row_of_a_toy_cache() -> None:
    (row,) = measure_decode(_point(ToyCache), lambda seed: ToyCache())
    assert row["status"] == "ok", row["reason"]
    assert row["task"] == "decode" and row["pass"] == "decode" and row["kv_heads"] == 2
    assert row["q_len"] == 1 and row["kv_len"] == 48 and row["repeats"] == 3
    assert row["gqa"] == "repeat" and "attention step alone" in row["timing"]
    generated = 4  # warm-up and timed steps, one token each
    assert row["state_length"] == 48 + generated
    assert row["state_bytes"] == row["state_bytes_measured"] == 2 * 2 * 52 * 8 * 4
    assert row["decode_rel_err"] < 1e-5 and row["forward_rel_err"] < 1e-5
    assert row["rel_err"] == row["decode_rel_err"]
    assert row["tokens_per_s"] == pytest.approx(1e3 / row["step_ms"])
    assert row["achieved_gbs"] > 0 and row["copy_gbs"] > 0
    assert row["bandwidth_fraction"] == pytest.approx(row["achieved_gbs"] / row["copy_gbs"])
    assert row["model_tokens_per_s"] > 0 and 0 < row["model_attention_share"]
    norms, mlp = 2 * 2 * 32, (32 * 64 + 64) + (64 * 32 + 32)
    projections = (32 + 16 + 16 + 32) * 33  # W_K, W_V: the two KV heads' rows only
    assert row["model_params"] == norms + projections + mlp


def test_a_wrong_state_update_shows_in_the_decode_error() -> None:
    (row,) = measure_decode(_point(WrongStep), lambda seed: WrongStep())
    assert row["status"] == "ok"
    assert row["decode_rel_err"] > 1e-2 and row["forward_rel_err"] < 1e-5


def test_a_variant_without_a_decode_form_is_unsupported() -> None:
    (row,) = measure_decode(_point(ToyNoDecode), lambda seed: ToyNoDecode())
    assert row["status"] == "unsupported"
    assert row["reason"] == "toy_plain: no streaming form (the toy says so)"
    assert row.get("step_ms") is None and row.get("prefill_ms") is None


def test_a_variant_that_refuses_grouped_heads_is_unsupported() -> None:
    (row,) = measure_decode(_point(ToyNoGroups), lambda seed: ToyNoGroups())
    assert row["status"] == "unsupported" and "grouped heads" in row["reason"]
    point = _point(ToyNoGroups, task="attention", kv_len=16)
    rows = measure_attention(point, lambda seed: ToyNoGroups())
    assert [r["status"] for r in rows] == ["unsupported"] and "grouped" in rows[0]["reason"]


def test_builtin_linformer_has_no_decode_form() -> None:
    import variants

    cls = variants.get_class("linformer")
    (row,) = measure_decode(_point(cls, kv_len=32), lambda seed: cls(kv_len=32, head_dim=8))
    assert row["status"] == "unsupported" and row["reason"].startswith("linformer:")


def test_over_budget_before_allocating() -> None:
    point = _point(ToyCache, kv_len=64)
    point.measure = MeasureConfig(memory_budget_gb=1e-6)
    (row,) = measure_decode(point, lambda seed: ToyCache())
    assert row["status"] == "over_budget" and "budget" in row["reason"]


def test_attention_task_runs_grouped_heads_against_the_reference() -> None:
    rows = measure_attention(_point(ToyCache, task="attention", kv_len=16), lambda s: ToyCache())
    (row,) = rows
    assert row["status"] == "ok" and row["kv_heads"] == 2 and row["gqa"] == "repeat"
    assert row["rel_err"] < 1e-5 and row["attn_tv"] < 1e-5


@pytest.mark.parametrize("name", ["retention", "deltanet"])
def test_operators_of_their_own_decode_without_an_error_against_exact(name) -> None:
    import variants

    cls = variants.get_class(name)
    (row,) = measure_decode(_point(cls), lambda seed: cls())
    assert row["status"] == "ok", row["reason"]
    assert row["approximates_softmax"] is False and "not an approximation" in row["notes"]
    assert row.get("decode_rel_err") is None and row.get("rel_err") is None
    assert row["state_bytes"] == row["state_bytes_measured"] > 0


def test_attention_rows_of_an_operator_of_its_own_carry_no_error_and_say_why() -> None:
    import variants

    cls = variants.get_class("deltanet")
    point = _point(cls, task="attention", kv_len=32)
    (row,) = measure_attention(point, lambda seed: cls())
    assert row["status"] == "ok" and row["approximates_softmax"] is False
    assert row.get("rel_err") is None and "not an approximation" in row["notes"]
    bidirectional = dataclasses.replace(point, causal=False)
    (refused,) = measure_attention(bidirectional, lambda seed: cls())
    assert refused["status"] == "unsupported" and "causal by construction" in refused["reason"]
