"""The attention task's measure: every failure becomes a row, ok rows fill every column and
explain themselves."""

from __future__ import annotations

import dataclasses
import platform

import pytest
import torch

import variants
from harness.analysis.rows import COLUMNS
from harness.app.point import Point
from harness.measure import env
from harness.measure.config import MeasureConfig
from harness.measure.factory import make_factory, shape_kwargs
from harness.tasks.attention.measure import measure

pytestmark = pytest.mark.slow

#: Columns the caller (the app) or the environment may leave empty on an ok CPU row; ``trained``
#: is null for a variant without trainable parameters, ``ref_rows`` when every row was covered.
MAY_BE_EMPTY = {"run_id", "experiment", "point_id", "reason", "cuda", "xformers", "git_commit",
                "trained", "ref_rows"}  # fmt: skip
#: Filled on CUDA only (tests/test_cuda.py checks them there); empty on the CPU.
CUDA_ONLY = {"matmul_tflops_bf16", "l2_flushed", "gpu_driver", "gpu_sm_clock_mhz",
             "gpu_max_sm_clock_mhz", "gpu_mem_clock_mhz"}  # fmt: skip


def _point(variant="full", **measure) -> Point:
    return Point(
        variant_cls=variants.get_class(variant), task="attention", variant=variant, params={},
        batch=1, heads=2, q_len=48, kv_len=48, head_dim=16, dtype="float32", device="cpu",
        causal=False, inputs="gaussian", inputs_params={"temperature": 1.0}, seed=0,
        seeds=[0, 1, 2], passes=["fwd", "bwd", "fwd_bwd"],
        measure=MeasureConfig(min_run_time=0.01, threads=1, attn_matrix_max_n=64, **measure),
    )  # fmt: skip


def _factory(name, **params):
    return make_factory(variants.get_class(name), params, 48, 16)


class NaNAttention(variants.AttentionVariant):
    name = "nan_test"
    exact = False

    def forward(self, q, k, v, causal=False):
        return torch.full_like(q, float("nan"))

    def flops(self, batch, heads, q_len, kv_len, head_dim, causal):
        return 1


class RaisingAttention(NaNAttention):
    name = "raising_test"

    def forward(self, q, k, v, causal=False):
        raise RuntimeError("boom")


class NoBackward(NaNAttention):
    name = "nobwd_test"
    supports_backward = False

    def forward(self, q, k, v, causal=False):
        return torch.softmax(q @ k.transpose(-2, -1), -1) @ v


class RandomAttention(NoBackward):
    """Exact attention plus seed-dependent noise: a stand-in for a randomised variant."""

    name = "random_test"
    randomized = True
    supports_backward = True

    def __init__(self, seed=0):
        super().__init__()
        self.seed = seed

    def forward(self, q, k, v, causal=False):
        noise = torch.randn(q.shape, generator=torch.Generator().manual_seed(self.seed))
        return super().forward(q, k, v, causal) + 0.01 * noise


@pytest.mark.parametrize("name", ["full", "sdpa"])
def test_ok_rows_fill_every_column(name):
    rows = measure(_point(name), _factory(name))
    assert [r["pass"] for r in rows] == ["fwd", "bwd", "fwd_bwd"]
    for row in rows:
        assert row["status"] == "ok", row["reason"]
        no_knob = {"knob", "knob_value"}  # full and sdpa have no knob
        empty = [c for c in COLUMNS if row.get(c) is None and c not in MAY_BE_EMPTY | no_knob]
        assert set(empty) == CUDA_ONLY, f"{row['pass']}: {empty}"
        assert row["rel_err"] < 1e-5 and row["grad_rel_err"] < 1e-4
        assert row["baseline_zeros_rel_err"] == 1.0 and 0 < row["baseline_uniform_rel_err"] < 1
    # bwd and fwd_bwd follow the variant's own counts
    variant = _factory(name)(0)
    shape = (1, 2, 48, 48, 16)
    fwd_flops = rows[0]["flops"]
    assert fwd_flops == variant.flops(*shape, False)
    assert rows[1]["flops"] == variant.backward_flops(*shape, False)
    assert rows[2]["flops"] == fwd_flops + rows[1]["flops"]
    assert rows[0]["threads"] == 1


def test_rows_explain_themselves():
    # exact / randomized / knob / knob_value from the variant's class; params a dict
    (row,) = measure(
        dataclasses.replace(_point("linformer", timing=False, memory=False), passes=["fwd"]),
        _factory("linformer", k=8),
    )
    assert row["status"] == "ok", row["reason"]
    assert (row["exact"], row["randomized"]) == (False, True)
    assert (row["knob"], row["knob_value"]) == ("k", 8)
    assert isinstance(row["params"], dict) and row["params"]["k"] == 8
    assert row["params"]["kv_len"] == 48 and isinstance(row["inputs_params"], dict)
    (row,) = measure(dataclasses.replace(_point("sdpa"), passes=["fwd"]), _factory("sdpa"))
    assert (row["exact"], row["randomized"], row["knob"], row["knob_value"]) == (
        True, False, None, None)  # fmt: skip
    # a point that fails before its variant is built still carries its variant class's facts
    (row, *_) = measure(_point(), lambda seed: RaisingAttention(bogus=1))
    assert row["status"] == "error" and row["exact"] is True and row["params"] == {}


def test_shape_kwargs_follow_the_constructor():
    assert shape_kwargs(variants.get_class("full"), 64, 16, seed=3) == {
        "kv_len": 64, "head_dim": 16}  # fmt: skip
    assert shape_kwargs(variants.get_class("performer"), 64, 16, seed=3)["seed"] == 3
    assert shape_kwargs(lambda **kw: None, 64, 16, seed=3) == {
        "kv_len": 64, "head_dim": 16, "seed": 3}  # fmt: skip
    built = make_factory(variants.get_class("linformer"), {"k": 8}, 64, 16)(0)
    assert built.kv_len == 64 and built.head_dim == 16 and built.seed == 0


def test_unsupported_xformers_on_cpu():
    rows = measure(_point("xformers"), _factory("xformers"))
    assert {r["status"] for r in rows} == {"unsupported"}
    assert "device cpu not supported" in rows[0]["reason"]


def test_over_budget_before_allocating():
    # a refusal by the estimate is its own status (real allocation failures read oom)
    rows = measure(_point(memory_budget_gb=1e-6), _factory("full"))
    assert {r["status"] for r in rows} == {"over_budget"}
    assert "memory_budget_gb=1e-06" in rows[0]["reason"]


def test_nan_output():
    rows = measure(_point(), lambda seed: NaNAttention())
    assert {r["status"] for r in rows} == {"nan"}
    assert "NaN" in rows[0]["reason"]


def test_exception_becomes_error_row():
    rows = measure(_point(), lambda seed: RaisingAttention())
    assert {r["status"] for r in rows} == {"error"}
    assert rows[0]["reason"] == "RuntimeError: boom"


def test_bad_input_generator_is_an_error_row():
    point = dataclasses.replace(_point(), inputs="uniform")
    rows = measure(point, _factory("full"))
    assert {r["status"] for r in rows} == {"error"} and "gaussian" in rows[0]["reason"]


def test_no_backward_marks_only_backward_rows():
    rows = measure(_point(), lambda seed: NoBackward())
    assert [r["status"] for r in rows] == ["ok", "unsupported", "unsupported"]
    assert "backward is not supported" in rows[1]["reason"]


def test_randomised_variant_repeats_over_seeds():
    rows = measure(_point(timing=False, memory=False), lambda seed: RandomAttention(seed))
    assert rows[0]["status"] == "ok"
    assert rows[0]["seeds"] == "[0, 1, 2]"
    assert rows[0]["rel_err"] > 0 and rows[0]["rel_err_std"] > 0


def test_environment_and_device():
    info = env.environment("cpu")
    assert {"torch", "cuda", "xformers", "device_name", "cpu_model", "threads", "git_commit",
            "host", "time", "python", "platform"} <= set(info)  # fmt: skip
    assert info["python"] == platform.python_version() and info["platform"]
    assert info["time"].endswith("+00:00")
    assert env.resolve_device("auto") in ("cpu", "cuda") and env.resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="measure.threads"):
        env.set_threads(0)


def test_row_rel_err_matches_an_independent_computation():
    # The rows' rel_err for an approximation, recomputed outside the harness: the same inputs
    # (make_inputs with the point's seed and temperature), the variant's float32 output, and a
    # float64 softmax attention written here with numpy.
    import numpy as np

    from harness.measure.inputs import make_inputs

    point = dataclasses.replace(
        _point("local", timing=False, memory=False),
        inputs_params={"temperature": 2.0},
        passes=["fwd"],
    )
    (row,) = measure(point, _factory("local", window=5))
    q, k, v = make_inputs("gaussian", 1, 2, 48, 48, 16, torch.float32, "cpu", 0, temperature=2.0)
    out = variants.create("local", window=5)(q, k, v).double().numpy()
    qn, kn, vn = (t.double().numpy() for t in (q, k, v))
    s = qn @ kn.transpose(0, 1, 3, 2) / 4.0
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = (p / p.sum(-1, keepdims=True)) @ vn
    expected = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert row["status"] == "ok" and expected > 1e-3  # a real approximation error
    assert row["rel_err"] == pytest.approx(expected, rel=1e-9)


def test_trained_column_follows_trainable_parameters():
    # null where a variant has nothing to train (gaussian linformer: fixed buffers), the
    # variant's flag where it has (learned projections: False until fitted)
    point = dataclasses.replace(_point("linformer", timing=False, memory=False), passes=["fwd"])
    (fixed,) = measure(point, _factory("linformer", k=8))
    (learned,) = measure(point, _factory("linformer", k=8, init="learned"))
    assert fixed["trained"] is None and learned["trained"] is False

    def fitted(seed):
        variant = _factory("linformer", k=8, init="learned")(seed)
        variant.trained = True
        return variant

    (row,) = measure(point, fitted)
    assert row["trained"] is True
