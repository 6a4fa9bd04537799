"""The "Quality after training" section from synthetic training rows (no training here).

The rows are those of a small, known sweep: MQAR at n = 64 and 128 and chars at n = 256; exact
attention (sdpa), a sliding window (local, window 8 and 32), Performer (8 and 32 features),
linear attention, Linformer (unsupported: causal) and a variant whose every run diverged; three
learning rates, two seeds. At n = 128 the window of 32 is within tolerance of exact attention and
faster; Performer with 8 features is faster still but far worse, so Which-attention must pick
the window. Accuracy rows (untrained error) and fwd_bwd timing rows of the same variants sit in
the same folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from harness.analysis.rows import complete_row, flat_frame, read_rows, write_rows
from harness.analysis.series import prepare
from harness.report import build
from harness.report.sections import task_rows
from harness.tasks.attention.figures import plot_all
from harness.tasks.train.report_data import curve_points, state_size, train_frame
from harness.tasks.train.report_figures import (
    TRAIN_FIGURES,
    plot_train_curves,
    plot_train_lr,
    plot_train_vs_knob,
    plot_train_vs_time,
)
from harness.tasks.train.report_markdown import which_attention, which_markdown

LRS = (1e-3, 3e-3, 1e-2)
#: (variant, knob, knob value) of every arm.
ARMS = [
    ("sdpa", None, None),
    ("local", "window", 8),
    ("local", "window", 32),
    ("performer", "nb_features", 8),
    ("performer", "nb_features", 32),
    ("linear", None, None),
    ("linformer", "k", 8),
    ("diverges", None, None),
]
#: Value at the best learning rate (3e-3) and time per step (ms) per (task, n, variant, knob).
QUALITY = {
    ("mqar", 64): {
        ("sdpa", None): (0.99, 10.0), ("local", 8): (0.40, 7.0), ("local", 32): (0.80, 8.0),
        ("performer", 8): (0.30, 5.0),
        ("performer", 32): (0.50, 6.0), ("linear", None): (0.2, 4.0),
    },
    ("mqar", 128): {
        ("sdpa", None): (0.99, 20.0), ("local", 8): (0.30, 9.0), ("local", 32): (0.97, 12.0),
        ("performer", 8): (0.25, 6.0),
        ("performer", 32): (0.45, 8.0), ("linear", None): (0.2, 5.0),
    },
    ("chars", 256): {
        ("sdpa", None): (3.50, 40.0), ("local", 8): (3.30, 15.0), ("local", 32): (3.45, 20.0),
        ("performer", 8): (4.50, 10.0),
        ("performer", 32): (4.20, 14.0), ("linear", None): (4.8, 9.0),
    },
}  # fmt: skip
#: The start of the Which-attention row of MQAR at n = 128.
N128 = (
    "| mqar causal, 4 pairs, vocab 256 | 128 | sdpa: 0.985 [0.98–0.99] | local(window=32): 0.965 |"
)
#: Its verdict cells: within, worse (converged, seeds apart), not converged, unresolved.
N128_VERDICTS = (
    "| 2 of 6 | 4: linear, local(window=8), performer(nb_features=8), performer(nb_features=32) "
    "| 0 | 0 |"
)
DEVICE = {"device": "cpu", "device_name": "Test CPU", "host": "host-t", "threads": 1}


def _train_row(task: str, n: int, arm: tuple, lr: float, seed: int) -> dict[str, Any]:
    variant, knob, value = arm
    accuracy = task == "mqar"
    params = {knob: value} if knob else {}
    if variant == "performer":
        params["seed"] = 100 * seed  # follows the row's seed: never a series of its own
    row = {
        **DEVICE,
        "task": "train", "train_task": task, "variant": variant, "params": params,
        "exact": variant == "sdpa", "randomized": variant == "performer", "knob": knob,
        "knob_value": value, "dtype": "float32", "heads": 1, "head_dim": 64, "q_len": n,
        "kv_len": n, "causal": True, "seed": seed, "pass": "train", "batch": 64, "lr": lr,
        "steps": 600, "point_id": f"{task}-{n}-{variant}-{value}-{lr}-{seed}",
        "task_params": {"vocab": 256, "num_pairs": 4, "seq_len": n, "form": "causal"}
        if accuracy else {"vocab": 96, "seq_len": n},
        "model": {"vocab": 256, "width": 64, "heads": 1, "layers": 2, "mlp_ratio": 0},
        "metric": "accuracy" if accuracy else "bpc", "chance": 1 / 128 if accuracy else 6.6,
        "n_params": 70000 + (64 * 8 if variant == "performer" else 0), "n_attention_params": 33000,
        "n_variant_params": 0, "time": "2026-01-01T00:00:00",
    }  # fmt: skip
    if variant == "linformer":
        reason = "linformer: causal attention is not supported by this variant"
        return complete_row(row | {"status": "unsupported", "reason": reason})
    if variant == "diverges":
        reason = "loss or evaluation not finite at step 120"
        return complete_row(row | {"status": "nan", "reason": reason, "nan_step": 120})
    if variant == "performer" and value == 8 and lr == 1e-2 and seed == 0:
        reason = "loss or evaluation not finite at step 80"
        return complete_row(row | {"status": "nan", "reason": reason, "nan_step": 80})
    best, time_ms = QUALITY[(task, n)][(variant, value)]
    off = abs(np.log10(lr / 3e-3))  # the best rate is 3e-3; others are worse
    value_ = best * (1 - 0.3 * off) - 0.01 * seed if accuracy else best + 0.4 * off + 0.01 * seed
    curve = [[s, value_ * s / 300] if accuracy else [s, 6.6 - (6.6 - value_) * s / 300]
             for s in range(0, 301, 50)]  # fmt: skip
    reached = accuracy and value_ >= 0.9
    return complete_row(
        row
        | {
            "status": "ok",
            "final_eval": value_,
            "best_eval": value_,
            "curve": curve,
            "steps_run": 300,
            "steps_to_90": 250 if reached else None,
            "time_ms": time_ms,
            "peak_mem_bytes": 2**20 * time_ms,
        }  # fmt: skip
    )


def _attention_row(variant: str, knob, value, n: int, pass_: str) -> dict[str, Any]:
    """An attention point of the same variant (accuracy or timing) on the same device."""
    err = {"sdpa": 1e-7, "local": 0.5 * 8 / (value or 8), "performer": 0.3 * 8 / (value or 8)}
    row = {
        **DEVICE, "variant": variant, "params": {knob: value} if knob else {},
        "exact": variant == "sdpa", "randomized": variant == "performer", "knob": knob,
        "knob_value": value, "dtype": "float32", "batch": 1, "heads": 8, "head_dim": 64,
        "q_len": n, "kv_len": n, "causal": True, "inputs": "gaussian",
        "inputs_params": {"temperature": 1.0}, "seed": 0, "pass": pass_, "status": "ok",
        "point_id": f"attn-{variant}-{value}-{n}", "time": "2026-01-01T00:00:00",
        "time_ms": {"sdpa": 2.0, "local": 1.0, "performer": 0.5}[variant],
        "peak_mem_bytes": {"sdpa": 4e6, "local": 1e6, "performer": 2e6}[variant],
    }  # fmt: skip
    if pass_ == "fwd":
        row["rel_err"] = err[variant]
    return complete_row(row)


def synthetic_train_rows(attention: bool = True) -> list[dict[str, Any]]:
    """Training rows of the sweep in the module docstring (and its attention rows)."""
    rows = [
        _train_row(task, n, arm, lr, seed)
        for task, n in QUALITY
        for arm in ARMS
        for lr in LRS
        for seed in (0, 1)
    ]
    if attention:
        rows += [
            _attention_row(variant, knob, value, n, pass_)
            for variant, knob, value in ARMS[:5]
            for n in (64, 128, 256, 512)
            for pass_ in ("fwd", "fwd_bwd")
        ]
    return rows


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return prepare(pd.DataFrame(synthetic_train_rows()))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("train_sweep")
    write_rows(folder / "job0" / "rows.jsonl", synthetic_train_rows())
    figures = (*TRAIN_FIGURES, "time_fwd", "error_vs_seq_len")
    return build.build_report([folder], heatmap=False, figures=figures)


def _attention(df: pd.DataFrame) -> pd.DataFrame:
    """The attention rows (what the section compares the training rows with)."""
    return df[task_rows(df, "attention")]


def _legend_labels(fig) -> set[str]:
    return {t.get_text() for legend in fig.legends for t in legend.get_texts()}


def test_section_appears_with_settings_knobs_and_spreads(report: Path) -> None:
    text = report.read_text()
    assert "## Quality after training" in text
    for heading in (
        "#### mqar n=64 causal, 4 pairs, vocab 256; width 64 × 2 layers, 1 head, no MLP; "
        "≤ 600 steps of batch 64",
        "#### mqar n=128 causal",
        "#### chars n=256 causal, pydoc text, vocab 96",
    ):
        assert heading in text
    assert text.index("#### mqar n=64") < text.index("#### mqar n=128") < text.index("#### chars")
    section = text[text.index("## Quality after training") :]
    assert "min–max over lrs × seeds" in section and "best lr (of n rates)" in section
    lines = section.splitlines()
    # exact attention at its best rate: mean [range] over the two seeds, spread over all six runs
    sdpa = next(ln for ln in lines if ln.startswith("| sdpa (exact) |"))
    assert "| 0.985 [0.98–0.99] (n=2) |" in sdpa and "(n=6)" in sdpa and "0.003 (of 3)" in sdpa
    assert "| 64 keys |" in sdpa and "70,000 / 33,000" in sdpa and "| 6/6 |" in sdpa
    window = next(ln for ln in lines if ln.startswith("| local(window=8) |"))
    assert "| window=8 | 9 keys |" in window  # causal: window + 1 keys
    # the performer seed is not an arm of its own; its diverged run is counted
    perf = next(ln for ln in lines if ln.startswith("| performer(nb_features=8) |"))
    assert "nb_features=8 | 8 features" in perf and "| 5/6 |" in perf
    assert "steps to 90%" in section  # MQAR tables only
    chars = section[section.index("#### chars") :]
    assert "steps to 90%" not in chars.split("### Which attention?")[0]


def test_unfinished_runs_are_listed_not_plotted(report: Path, frame: pd.DataFrame, tmp_path):
    text = report.read_text()
    assert "Runs that did not finish (not plotted)" in text
    assert "linformer: causal attention is not supported by this variant" in text
    assert "nan at step 120" in text and "nan at step 80" in text
    rows = train_frame(frame)
    for plot in (plot_train_vs_knob, plot_train_vs_time, plot_train_curves, plot_train_lr):
        fig = plot(rows, tmp_path / f"{plot.__name__}.png", "Test CPU @ host-t")
        labels = " ".join(_legend_labels(fig))
        plt.close(fig)
        assert "linformer" not in labels and "diverges" not in labels, plot.__name__
        assert "local" in labels, plot.__name__
    # the learning curves: one line per finished seed at the best rate, never the diverged one
    fig = plot_train_curves(rows, tmp_path / "curves.png", "cpu")
    ax = fig.axes[0]
    drawn = [ln for ln in ax.get_lines() if ln.get_color() and len(ln.get_xdata()) == 7]
    plt.close(fig)
    assert len(drawn) == 2 * 6  # six arms with a finished run, two seeds each


def test_figures_are_written_and_embedded(report: Path, check_png) -> None:
    text = report.read_text()
    for name in TRAIN_FIGURES:
        path = report.parent / f"{name}.png"
        check_png(path)
        assert f"![{name}]({name}.png)" in text
    # the attention figures still draw from the attention rows alone
    check_png(report.parent / "time_fwd.png")


def test_which_attention_picks_the_fastest_within_tolerance(frame: pd.DataFrame) -> None:
    rows = train_frame(frame)
    entries = {(e["task"], e["n"]): e for e in which_attention(rows, _attention(frame))}
    short = entries[("mqar", 64)]  # nothing but exact attention is within 0.05
    assert short["arm"] == "sdpa" and short["speedup"] == pytest.approx(1.0)
    assert short["qualified"] == 1
    long = entries[("mqar", 128)]  # the window of 32 (0.97), not the faster performer (0.25)
    assert long["arm"] == "local(window=32)"
    assert long["speedup"] == pytest.approx(20 / 12) and long["mem_ratio"] == pytest.approx(0.6)
    assert long["attn_speedup"] == pytest.approx(2.0)
    assert long["attn_mem_ratio"] == pytest.approx(0.25)
    chars = entries[("chars", 256)]  # lower is better: the window of 8 beats exact attention
    assert chars["arm"] == "local(window=8)" and chars["speedup"] == pytest.approx(40 / 15)
    # a tighter tolerance leaves exact attention at n = 128
    strict = which_attention(rows, _attention(frame), {"accuracy": 0.01})
    assert {e["n"]: e["arm"] for e in strict if e["task"] == "mqar"}[128] == "sdpa"


def test_which_attention_table_in_report(report: Path) -> None:
    text = report.read_text()
    which = text[text.index("### Which attention?") :]
    assert "within 0.05 accuracy (absolute), 0.05 bits per char" in which
    assert f"{N128} 1.67× | 0.60 | 2.00× / 0.25 {N128_VERDICTS}" in which


def test_untrained_error_figure_needs_accuracy_rows(tmp_path: Path) -> None:
    write_rows(tmp_path / "rows.jsonl", synthetic_train_rows(attention=False))
    out = build.build_report([tmp_path], heatmap=False, figures=TRAIN_FIGURES)
    text = out.read_text()
    assert "train_vs_error: no accuracy rows (rel_err)" in text
    assert "## Results" not in text, "no attention section without attention rows"
    assert "## Quality after training" in text
    assert f"{N128} 1.67× | 0.60 | – {N128_VERDICTS}" in text  # no attention rows: no ratio


def test_training_rows_stay_out_of_attention_figures(frame: pd.DataFrame, tmp_path) -> None:
    assert not (_attention(frame)["task"].astype(str) == "train").any()
    only_train = frame[frame["task"].astype(str) == "train"]
    results = plot_all(only_train, tmp_path, only=["time_fwd", "realmodel"])
    assert all(r.path is None and r.skipped for r in results)
    # the attention series keep their names beside training rows of other parameters (the
    # performer rows of training carry a seed)
    rows = pd.DataFrame(synthetic_train_rows())
    attention = rows["task"].astype(str) != "train"
    names = set(build._prepare(rows).loc[attention, "series"])
    assert names == {
        "sdpa", "local(window=8)", "local(window=32)", "performer(nb_features=8)",
        "performer(nb_features=32)",
    }  # fmt: skip
    assert any("seed" in name for name in prepare(rows).loc[attention, "series"])


def test_results_csv_round_trip_keeps_curves(tmp_path: Path) -> None:
    df = pd.DataFrame(synthetic_train_rows(attention=False))
    flat_frame(df).to_csv(tmp_path / "results.csv", index=False)
    rows = train_frame(prepare(read_rows([tmp_path / "results.csv"])))
    steps, values = curve_points(rows.loc[rows["status"] == "ok", "curve"].iloc[0])
    assert len(steps) == 7 and steps[-1] == 300 and np.isfinite(values).all()
    assert curve_points(json.dumps([[0, 0.1], [50, None]]))[0].tolist() == [0.0]


@pytest.mark.parametrize(
    "knob, value, params, causal, expected",
    [
        ("window", 8, {}, True, (9, "keys")),
        ("window", 8, {"num_global": 2}, False, (19, "keys")),
        ("window", 256, {}, True, (64, "keys")),  # capped at n
        ("k", 32, {}, False, (32, "projected rows")),
        ("nb_features", 256, {}, True, (256, "features")),
        ("num_landmarks", 128, {}, False, (64, "landmarks")),
        ("num_random_blocks", 1, {"block_size": 4}, False, (20, "keys")),  # 4 x (3 + 1 + 1)
        ("rank", 3, {}, True, (3, "rank")),
    ],
)
def test_state_size_from_knob(knob, value, params, causal, expected) -> None:
    assert state_size(knob, value, params, 64, causal, False) == expected
    assert state_size(None, None, {}, 64, causal, True) == (64, "keys")
    assert state_size(None, None, {}, 64, causal, False) is None


def test_a_setting_exact_attention_did_not_learn_is_flagged() -> None:
    entry = {
        "task": "mqar", "n": 64, "setting": "mqar n=64 causal, 8 pairs, vocab 256; ≤ 600 steps",
        "metric": "accuracy", "tolerance": 0.05, "arms": 2, "exact_arm": "sdpa",
        "exact_value": 0.15, "arm": "local(window=8)", "value": 0.14, "speedup": 1.5,
        "mem_ratio": 0.5, "attn_speedup": np.nan, "attn_mem_ratio": np.nan, "qualified": 2,
        "note": "",
    }  # fmt: skip
    text = which_markdown([entry], {"accuracy": 0.05})
    assert "| mqar causal, 8 pairs, vocab 256 | 64 | sdpa: 0.15 (not learnt: below 0.5) |" in text


def test_two_devices_give_two_training_subsections(tmp_path: Path, check_png) -> None:
    rows = synthetic_train_rows(attention=False)
    other = [dict(r, host="host-u", point_id=f"{r['point_id']}-u") for r in rows]
    write_rows(tmp_path / "rows.jsonl", rows + other)
    text = build.build_report([tmp_path], heatmap=False, figures=["train_vs_time"]).read_text()
    section = text[text.index("## Quality after training") :]
    assert "### Test CPU @ host-t" in section and "### Test CPU @ host-u" in section
    check_png(tmp_path / "report" / "train_vs_time__test-cpu-host-u.png")
