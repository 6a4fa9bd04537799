"""``attnbench-advise``: the answer, its evidence and its errors, from synthetic stored rows, and
one tiny real measurement (seq_len 64, head_dim 16, two variants) stored like a sweep's rows.

The synthetic rows are one prefill setting (B1 H2 q256 kv256 d32 float32 causal) measured on
this machine: exact attention (sdpa, 10 ms, 10 MB), a window (local, 4 ms, 100 MB, error 0.10),
linear attention (6 ms, 20 MB, error 0.30), Performer (3 ms, error above uniform attention's),
retention (5 ms; not an approximation of softmax), Linformer (unsupported: causal); uniform
attention's error is 0.90. Another machine's rows say Performer took 0.1 ms and must be ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.advise import lookup
from harness.advise.answer import advise
from harness.advise.plan import compose_points, planned
from harness.advise.setting import Setting, check
from harness.analysis.rows import complete_row, read_rows, write_rows
from harness.app.advise import cli
from harness.app.config import register_schema

SHAPE = {"batch": 1, "heads": 2, "kv_heads": 2, "q_len": 256, "kv_len": 256, "head_dim": 32}
SETTING = Setting(seq_len=256, heads=2, head_dim=32, causal=True, mode="prefill", device="cpu")
#: variant: (knob, knob value, ms, peak bytes, rel_err, status, approximates softmax)
ARMS = {
    "sdpa": (None, None, 10.0, 10e6, 1e-7, "ok", True),
    "local": ("window", 64, 4.0, 100e6, 0.10, "ok", True),
    "linear": (None, None, 6.0, 20e6, 0.30, "ok", True),
    "performer": ("nb_features", 64, 3.0, 5e6, 0.95, "ok", True),
    "retention": (None, None, 5.0, 8e6, None, "ok", False),
    "linformer": ("k", 64, None, None, None, "unsupported", True),
}
UNIFORM = 0.90


@pytest.fixture(scope="module", autouse=True)
def _schema() -> None:
    register_schema()


@pytest.fixture(scope="module")
def here() -> dict[str, Any]:
    """This machine's facts as rows record them."""
    return lookup.machine("cpu")


def _row(variant: str, here: dict[str, Any], **over: Any) -> dict[str, Any]:
    knob, value, ms, peak, err, status, approximates = ARMS[variant]
    row = {
        **SHAPE, "variant": variant,
        "params": {knob: value} if knob else {"backend": "auto"} if variant == "sdpa" else {},
        "exact": variant == "sdpa", "randomized": False, "knob": knob, "knob_value": value,
        "approximates_softmax": approximates, "device": "cpu", "device_name": here["device_name"],
        "cpu_model": here["cpu_model"], "threads": here["threads"], "host": "another-container",
        "dtype": "float32", "causal": True, "inputs": "structured", "seed": 0, "pass": "fwd",
        "status": status, "reason": None if status == "ok" else f"{variant}: no causal form",
        "time_ms": ms, "peak_mem_bytes": peak, "rel_err": err,
        "baseline_uniform_rel_err": None if err is None else UNIFORM,
        "point_id": f"pid-{variant}", "time": "2026-12-01T00:00:00+00:00",
    }  # fmt: skip
    return complete_row(row | over)


def _train_row(variant: str, knob_value: Any, value: float, seed: int) -> dict[str, Any]:
    knob = "window" if variant == "local" else None
    row = {
        "task": "train", "train_task": "mqar", "variant": variant, "exact": variant == "sdpa",
        "knob": knob, "knob_value": knob_value, "params": {knob: knob_value} if knob else {},
        "dtype": "float32", "heads": 1, "head_dim": 64, "q_len": 64, "kv_len": 64,
        "causal": True, "seed": seed, "pass": "train", "batch": 64, "lr": 3e-3, "steps": 2000,
        "task_params": {"vocab": 256, "num_pairs": 4}, "metric": "accuracy", "status": "ok",
        "final_eval": value, "converged": True, "stop_reason": "plateau", "time_ms": 10.0,
        "point_id": f"train-{variant}-{knob_value}-{seed}", "device": "cpu",
        "device_name": "Training CPU", "host": "elsewhere",
    }  # fmt: skip
    return complete_row(row)


@pytest.fixture
def stored(tmp_path: Path, here: dict[str, Any]) -> Path:
    """A results folder: this machine's rows, another machine's, and training rows."""
    sweep = tmp_path / "results" / "sweep"
    for variant in ARMS:
        write_rows(sweep / variant / "rows.jsonl", [_row(variant, here)])
    other = _row("performer", here, device_name="Other CPU", cpu_model="Other CPU",
                 time_ms=0.1, rel_err=0.01, point_id="pid-elsewhere")  # fmt: skip
    write_rows(tmp_path / "results" / "other" / "rows.jsonl", [other])
    return tmp_path / "results"


def _advise(folder: Path, names: list[str] | None = None, **limits: Any) -> dict[str, Any]:
    setting = Setting(**{**SETTING.__dict__, **limits})
    out = folder.parent / "out"
    return advise(setting, [folder], out, variant_names=names, measure=False)


def _arm(answer: dict[str, Any], name: str) -> dict[str, Any]:
    return next(a for a in answer["arms"] if a["variant"] == name)


def test_the_fastest_qualified_arm_wins_with_its_evidence(stored: Path) -> None:
    answer = _advise(stored)
    first = answer["arms"][0]
    assert first["rank"] == 1 and first["arm"] == "local"
    assert first["speedup"] == pytest.approx(10 / 4) and first["mem_ratio"] == pytest.approx(10)
    assert answer["recommendation"].startswith(
        "Use local: 2.50× faster than exact attention (sdpa)"
    )
    assert "error 0.1 (uniform 0.9)" in answer["recommendation"]
    assert "trained quality unknown" in answer["recommendation"]  # no training rows: not guessed
    assert first["evidence"] == [
        {"folder": str(stored / "sweep" / "local"), "point_ids": ["pid-local"]}
    ]
    assert first["command"].startswith("attnbench seq_len=256 heads=2 head_dim=32")
    assert "variant=local" in first["command"] and "knob=64" in first["command"]
    # Performer is faster but no better than uniform attention; Linformer did not run
    assert "no better than uniform" in _arm(answer, "performer")["excluded"]
    assert _arm(answer, "linformer")["rank"] is None
    assert "no causal form" in _arm(answer, "linformer")["excluded"]


def test_rows_of_another_machine_are_ignored(stored: Path) -> None:
    answer = _advise(stored)
    performer = _arm(answer, "performer")
    assert performer["time_ms"] == pytest.approx(3.0)
    assert performer["evidence"][0]["point_ids"] == ["pid-performer"]
    assert all("pid-elsewhere" not in json.dumps(a["evidence"]) for a in answer["arms"])


def test_a_memory_cap_excludes_the_winner(stored: Path) -> None:
    answer = _advise(stored, max_memory_bytes=50_000_000)
    assert _arm(answer, "local")["excluded"] == "memory over the cap"
    assert [a["arm"] for a in answer["arms"][:2]] == ["linear", "sdpa"]
    assert answer["recommendation"].startswith("Use linear: 1.67× faster")
    # retention (not softmax) has no error to check and no training rows: shown, not chosen
    retention = _arm(answer, "retention")
    assert retention["rel_err"] is None and retention["approximates_softmax"] is False
    assert retention["excluded"] == "no trained-quality rows (error n/a)"


def test_a_tolerance_no_variant_meets_leaves_exact_attention(stored: Path) -> None:
    answer = _advise(stored, ["sdpa", "local", "linear", "performer"], max_error=0.01)
    assert answer["arms"][0]["arm"] == "sdpa" and answer["arms"][0]["rank"] == 1
    assert answer["recommendation"].startswith(
        "Use exact attention (sdpa): the fastest approximation, performer (3.33× faster), is "
        "excluded (error over the limit)"
    )
    assert all(a["rank"] is None for a in answer["arms"][1:])
    assert _arm(answer, "local")["excluded"] == "error over the limit"


def test_no_arm_within_every_limit(stored: Path) -> None:
    answer = _advise(stored, max_memory_bytes=1_000_000)
    assert all(a["rank"] is None for a in answer["arms"])
    assert answer["recommendation"].startswith("No variant meets the limits")


def _train(folder: Path, arms: tuple) -> None:
    rows = [
        _train_row(variant, knob_value, value, seed)
        for variant, knob_value, values in arms
        for seed, value in enumerate(values)
    ]
    write_rows(folder / "train" / "rows.jsonl", rows)


def test_trained_quality_from_training_rows(stored: Path) -> None:
    exact, window, linear = ("sdpa", None, (0.99, 0.98)), ("local", 64, (0.97, 0.98)), (
        "linear", None, (0.25, 0.26))  # fmt: skip
    _train(stored, (exact, window, linear))
    answer = _advise(stored)
    assert answer["trained"]["task"] == "mqar" and answer["trained"]["n"] == 64
    assert _arm(answer, "local")["trained"]["verdict"] == "within"
    assert _arm(answer, "linear")["excluded"] == "trained quality worse"  # known: excluded
    assert "trained quality within 0.05 of exact attention" in answer["recommendation"]
    # asked for strictly, nothing without training rows qualifies: the window is over the cap
    strict = _advise(stored, quality_tolerance=0.05, max_memory_bytes=50_000_000)
    assert _arm(strict, "retention")["excluded"] == "no trained-quality rows (error n/a)"
    assert strict["arms"][0]["arm"] == "sdpa"
    assert strict["recommendation"].startswith("Use exact attention (sdpa)")


def test_an_operator_of_its_own_is_chosen_on_trained_quality(stored: Path) -> None:
    _train(stored, (("sdpa", None, (0.99, 0.98)), ("retention", None, (0.98, 0.985))))
    answer = _advise(stored, max_memory_bytes=50_000_000)
    assert answer["arms"][0]["arm"] == "retention"
    assert answer["recommendation"].startswith(
        "Use retention: 2.00× faster than exact attention (sdpa), 0.80× its memory (its own "
        "operator, not an approximation of softmax); trained quality within 0.05"
    )


def test_no_stored_rows_and_no_measuring_is_one_line(tmp_path: Path, capsys) -> None:
    code = cli(["--seq-len", "256", "--heads", "2", "--head-dim", "32", "--device", "cpu",
                "--no-measure", "--out", str(tmp_path), str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "no stored rows" in err


def _exit_code(args: list[str]) -> int:
    try:
        return cli(args)
    except SystemExit as exc:  # argparse's own errors
        return int(exc.code)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mode", "serve"], "mode='serve' is not one of train, prefill, decode"),
        (["--dtype", "f32"], "dtype='f32' is not one of float16, bfloat16, float32, float64"),
        (["--kv-heads", "3"], "kv_heads=3 must divide heads=2"),
        (["--device", "tpu"], "device='tpu' is not one of auto, cpu, cuda, cuda:N"),
        (["--quality-task", "lm"], "quality_task='lm' is not one of mqar, chars"),
        (["--variants", "nope"], "variants='nope' is not one of full, sdpa"),
        (["--max-memory", "2XB"], "max_memory='2XB' must be a size"),
        (["--mode", "decode", "--no-causal"], "causal=false is not allowed with mode=decode"),
        (["--heads", "0"], "heads=0 must be an integer >= 1"),
        (["--seq-len", "x"], "argument --seq-len: invalid int value: 'x'"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(args, message, tmp_path, capsys) -> None:
    base = ["--seq-len", "64", "--heads", "2", "--head-dim", "16", "--device", "cpu"]
    assert _exit_code([*base, *args, "--no-measure", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("attnbench-advise: ") and message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_lacks_is_one_line(tmp_path: Path, capsys) -> None:
    args = ["--seq-len", "64", "--heads", "2", "--head-dim", "16", "--device", "cuda"]
    assert _exit_code([*args, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "device=cuda" in err and "cannot use CUDA here" in err


def test_a_setting_no_variant_can_run_is_one_line(stored: Path, capsys) -> None:
    code = cli(["--seq-len", "256", "--heads", "2", "--head-dim", "32", "--device", "cpu",
                "--causal", "--variants", "linformer", "--no-measure", str(stored)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "cannot measure this setting here (linformer: linformer: no causal form)" in err


def test_missing_points_are_measured_and_stored(tmp_path: Path, one_thread) -> None:
    setting = check(
        Setting(seq_len=64, heads=2, head_dim=16, causal=True, device="cpu", threads=1)
    )
    out = tmp_path / "results"
    lines: list[str] = []
    first = advise(setting, [out], out, 60, ["sdpa", "local"], log=lines.append)
    assert first["measured"]["points"] == 2 and "time limit 60 s" in lines[0]
    folder = Path(first["measured"]["folder"])
    assert (folder / "variant=sdpa" / "rows.jsonl").is_file()
    assert (folder / "results.csv").is_file()
    rows = read_rows([folder])
    assert set(rows["variant"]) == {"sdpa", "local"} and set(rows["experiment"]) == {"advise"}
    assert (rows["status"] == "ok").all() and rows["rel_err"].notna().all()
    # the second advise reads them back: nothing measured, the same answer
    again = advise(setting, [out], out, 60, ["sdpa", "local"], log=lines.append)
    assert again["measured"]["points"] == 0
    assert [a["arm"] for a in again["arms"]] == [a["arm"] for a in first["arms"]]
    # each arm's command measures the same point
    sdpa = _arm(again, "sdpa")
    plan = planned(setting, "sdpa", ["variant=sdpa"])
    compose_points([plan])
    assert sdpa["command"] == plan.command
    assert sdpa["evidence"][0]["point_ids"] == [plan.point.point_id()]


def test_points_past_the_time_limit_are_listed_not_measured(stored: Path) -> None:
    setting = Setting(**{**SETTING.__dict__, "seq_len": 256})
    out = stored.parent / "out"
    answer = advise(setting, [stored], out, 0, ["sdpa", "local", "nystrom"], log=lambda _: None)
    left = answer["measured"]["left_out"]  # stored: sdpa; local only at window=64, not 256
    assert [c.rsplit(" ", 1)[1] for c in left] == ["variant=local", "variant=nystrom"]
    assert answer["measured"]["points"] == 0 and answer["arms"][0]["arm"] == "local"


def test_decode_mode_measures_the_decode_task(tmp_path: Path, one_thread) -> None:
    setting = Setting(seq_len=64, heads=2, kv_heads=1, head_dim=16, mode="decode", device="cpu")
    out = tmp_path / "results"
    answer = advise(setting, [out], out, 60, ["sdpa", "linear"], log=lambda _: None)
    rows = read_rows([answer["measured"]["folder"]])
    assert set(rows["task"]) == {"decode"} and set(rows["pass"]) == {"decode"}
    assert set(rows["kv_len"]) == {64} and set(rows["q_len"]) == {1}
    linear = _arm(answer, "linear")
    assert linear["peak_mem_bytes"] < _arm(answer, "sdpa")["peak_mem_bytes"]  # state, not cache
    assert "task=decode" in linear["command"]


def test_without_an_error_limit_an_approximation_must_halve_uniforms_error(
    stored: Path, here: dict[str, Any]
) -> None:
    # linear at 0.60 beside uniform attention's 0.90: better than uniform, but it recovers only
    # a third of what uniform misses; the default rule wants at least half (error <= 0.45)
    write_rows(stored / "sweep" / "linear" / "rows.jsonl", [_row("linear", here, rel_err=0.6)])
    default = _advise(stored, ["sdpa", "linear"])
    assert "half of uniform" in _arm(default, "linear")["excluded"]
    limited = _advise(stored, ["sdpa", "linear"], max_error=0.7)  # the user's limit decides
    assert _arm(limited, "linear")["excluded"] == ""
