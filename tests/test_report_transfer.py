"""The "Before / after transfer" section and figure from synthetic transfer rows (no model).

The rows are those of a small, known transfer sweep at n = 128 (numbers shaped like the CPU
preset's): Linformer k = 32 and 64 and Performer with 32 features, each before and after
fitting; Hedgehog, which has no knob; Nystrom, not transferable. Beside them, real-model rows of
the same device: longformer windows and Nystrom landmarks (nothing to fit; their cosine at
n = 128 differs from their mean over lengths, so the figure must pick the one at n = 128),
Linformer (transferred: no dotted curve) and exact sdpa (no curve).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from matplotlib.colors import to_hex

from harness.analysis.rows import complete_row, flat_frame, read_rows, write_rows
from harness.analysis.series import prepare
from harness.report import build
from harness.report.style import color_for
from harness.tasks.transfer.report_figures import (
    plot_transfer,
    plot_transfer_cosine,
    transfer_lines,
)
from harness.tasks.transfer.report_markdown import transfer_markdown, transfer_pairs

DEVICE = {"device": "cpu", "device_name": "Test CPU", "host": "host-t", "threads": 2,
          "dtype": "float32", "heads": 12, "head_dim": 32, "causal": False, "seed": 0,
          "pass": "fwd", "time": "2026-01-01T00:00:00"}  # fmt: skip
#: (variant, knob, value, params, fitted params, fit time) -> before / after numbers:
#: (embed cosine, per-layer output errors, retrieval top-1, its interval, agreement with exact)
PAIRS: dict[tuple, tuple[tuple, tuple]] = {
    ("linformer", "k", 32, 49152, 117.0): (
        (0.0086, [3.0, 4.73], 0.025, (0.0107, 0.0572), 0.025),
        (0.496, [0.8, 1.0], 0.2, (0.15, 0.261), 0.265),
    ),
    ("linformer", "k", 64, 98304, 60.7): (
        (0.0333, [1.53, 3.47], 0.1, (0.0657, 0.149), 0.12),
        (0.635, [0.73, 0.916], 0.27, (0.213, 0.335), 0.36),
    ),
    ("performer", "nb_features", 32, 6144, 21.6): (
        (0.5, [1.0, 1.12], 0.265, (0.209, 0.33), 0.33),
        (0.762, [0.7, 0.882], 0.305, (0.245, 0.372), 0.45),
    ),
    ("hedgehog", None, None, 73728, 92.0): (
        (0.439, [0.8, 0.908], 0.21, (0.159, 0.272), 0.315),
        (0.906, [0.4, 0.614], 0.4, (0.335, 0.469), 0.66),
    ),
}
LEARNABLE = {"linformer": {"init": "learned"}, "performer": {"learnable_projection": True}}
#: Real-model rows: (variant, knob, value) -> (cosine at n = 128, mean over lengths).
REALMODEL = {
    ("longformer", "window", 16): (0.9, 0.8),
    ("longformer", "window", 64): (0.97, 0.93),
    ("nystrom", "num_landmarks", 32): (0.85, 0.75),
    ("linformer", "k", 64): (0.2, 0.25),
    ("sdpa", None, None): (1.0, 1.0),
}


def _transfer_row(key: tuple, stage: str, numbers: tuple) -> dict[str, Any]:
    variant, knob, value, n_params, fit_time = key
    cosine, layers, top1, (low, high), agree = numbers
    params = {knob: value} if knob else {"chunk_size": 128}
    params |= LEARNABLE.get(variant, {}) | {"kv_len": 128, "head_dim": 32}
    row = {
        **DEVICE, "task": "transfer", "stage": stage, "trained": stage == "after",
        "variant": variant, "params": params, "exact": False, "randomized": knob is not None,
        "knob": knob, "knob_value": value, "batch": 32, "q_len": 128, "kv_len": 128,
        "inputs": "pydoc", "status": "ok", "texts": 16, "calibration_texts": 48,
        "point_id": f"transfer-{variant}-{value}", "embed_cosine": cosine,
        "layer_out_rel_err": json.dumps(layers), "layer_out_rel_err_mean": sum(layers) / 2,
        "retrieval_pairs": 200, "retrieval_top1": top1, "retrieval_top1_lo": low,
        "retrieval_top1_hi": high, "retrieval_agree_top1": agree,
        "retrieval_exact_top1": 0.42, "retrieval_exact_top1_lo": 0.354,
        "retrieval_exact_top1_hi": 0.489, "fit_params": n_params,
        "embed_cosine_unrelated": 0.29,
    }  # fmt: skip
    if stage == "after":
        row |= {"fit_time_s": fit_time, "fit_steps": 100, "fit_loss_first": 6.5,
                "fit_loss": "attention" if variant == "hedgehog" else "output",
                "fit_loss_final": 0.5, "fit_loss_curve": json.dumps([6.5, 1.0, 0.5]),
                "fit_file": f"transfer_{variant}_{value or 'default'}.pt"}  # fmt: skip
    return complete_row(row)


def _realmodel_row(key: tuple, cosines: tuple[float, float]) -> dict[str, Any]:
    variant, knob, value = key
    at_128, mean = cosines
    return complete_row(
        {
            **DEVICE,
            "task": "realmodel",
            "variant": variant,
            "params": {knob: value} if knob else {},
            "exact": variant == "sdpa",
            "randomized": False,
            "knob": knob,
            "knob_value": value,
            "batch": 4,
            "q_len": 512,
            "kv_len": 512,
            "inputs": "pydoc",
            "status": "ok",
            "point_id": f"realmodel-{variant}-{value}",
            "embed_cosine": mean,
            "embed_cosine_by_length": json.dumps({"64": 1.0, "128": at_128}),
        }  # fmt: skip
    )


def transfer_rows() -> list[dict[str, Any]]:
    rows = [
        _transfer_row(key, stage, numbers)
        for key, stages in PAIRS.items()
        for stage, numbers in zip(("before", "after"), stages)
    ]
    nystrom = {**DEVICE, "task": "transfer", "variant": "nystrom", "knob": "num_landmarks",
               "knob_value": 32, "params": {"num_landmarks": 32}, "status": "unsupported",
               "reason": "not transferable: no trainable parameters", "kv_len": 128,
               "point_id": "transfer-nystrom"}  # fmt: skip
    return rows + [complete_row(nystrom)]


def realmodel_rows() -> list[dict[str, Any]]:
    return [_realmodel_row(key, cosines) for key, cosines in REALMODEL.items()]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("transfer_sweep")
    write_rows(folder / "transfer" / "rows.jsonl", transfer_rows())
    write_rows(folder / "realmodel" / "rows.jsonl", realmodel_rows())
    return build.build_report([folder], heatmap=False, figures=["transfer_cosine", "realmodel"])


def _row_of(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def test_section_table_has_both_stages_fit_and_settings(report: Path) -> None:
    text = report.read_text()
    assert "## Before / after transfer" in text
    section = text[text.index("## Before / after transfer") :]
    assert "Held out: 16 texts of 128 tokens; fitted on 48 calibration texts." in section
    assert "Retrieval over 200 held-out pairs; exact attention's top-1 0.42 [0.354, 0.489]" in (
        section
    )
    k64 = _row_of(section, "| linformer | k | 64 |")
    assert "| 0.0333 → 0.635 | 0.29 |" in k64  # cosine before -> after, unrelated passages
    assert "| 2.5 (3.47) → 0.823 (0.916) |" in k64  # layer error: mean (worst layer)
    assert "| 0.1 [0.0657, 0.149] → 0.27 [0.213, 0.335] |" in k64  # top-1 [95% CI]
    assert "| 0.12 → 0.36 |" in k64  # agreement with exact
    assert k64.endswith("| 98304 | 60.7 | 6.5 → 0.5 (100 steps, output loss) | init=learned |")
    perf = _row_of(section, "| performer | nb_features | 32 |")
    assert perf.endswith("| learnable_projection=True |")
    hedgehog = _row_of(section, "| hedgehog | – | – | 0.439 → 0.906 |")
    assert "| 73728 | 92 |" in hedgehog and hedgehog.endswith("| chunk_size=128 |")
    assert "(100 steps, attention loss)" in hedgehog
    assert "| cosine of unrelated passages (exact model) |" in section
    # variants sorted, knob values in order
    assert section.index("| hedgehog") < section.index("| linformer | k | 32")
    assert section.index("| linformer | k | 32") < section.index("| linformer | k | 64")
    assert "- nystrom: unsupported: not transferable: no trainable parameters" in section
    # transfer rows are not real-model rows: the real-model table has none of them
    real = text[text.index("## Real-model fidelity") : text.index("## Before / after")]
    assert "| longformer | window=16 |" in real  # the slice is the real-model table
    assert "hedgehog" not in real and "learnable_projection" not in real


def test_figure_is_written_and_embedded(report: Path, check_png) -> None:
    text = report.read_text()
    check_png(report.parent / "transfer_cosine.png")
    section = text[text.index("## Before / after transfer") :]
    assert "### Transfer figures" in section
    assert "![transfer_cosine](transfer_cosine.png)" in section


def test_figure_draws_before_dashed_after_solid_beside_untrained(tmp_path: Path) -> None:
    df = prepare(pd.DataFrame(transfer_rows() + realmodel_rows()))
    fig = plot_transfer_cosine(df, tmp_path / "t.png", "Test CPU")
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    before, after = lines["linformer (k) before transfer"], lines["linformer (k) after transfer"]
    assert (before.get_linestyle(), after.get_linestyle()) == ("--", "-")
    assert to_hex(before.get_color()) == to_hex(after.get_color()) == color_for("linformer")
    assert list(before.get_xdata()) == [32, 64] and list(after.get_xdata()) == [32, 64]
    assert list(before.get_ydata()) == [0.0086, 0.0333]
    assert list(after.get_ydata()) == [0.496, 0.635]
    performer = lines["performer (nb_features) after transfer"]
    assert list(performer.get_xdata()) == [32] and list(performer.get_ydata()) == [0.762]
    # hedgehog has no knob: two levels across the figure
    level = lines["hedgehog (no knob) before transfer"]
    assert level.get_linestyle() == "--" and list(level.get_ydata()) == [0.439, 0.439]
    assert list(lines["hedgehog (no knob) after transfer"].get_ydata()) == [0.906, 0.906]
    # untrained real-model curves, dotted, at the transfer length (not their mean)
    window = lines["longformer (window), untrained"]
    assert window.get_linestyle() == ":" and list(window.get_xdata()) == [16, 64]
    assert list(window.get_ydata()) == [0.9, 0.97]
    assert list(lines["nystrom (num_landmarks), untrained"].get_ydata()) == [0.85]
    assert not any(label.startswith(("sdpa", "linformer (k), untrained")) for label in lines)
    # the reference: exact MiniLM's cosine between different held-out passages, a grey level
    reference = lines["exact model, unrelated held-out passages: 0.29"]
    assert reference.get_gid() == "baseline_unrelated" and reference.get_linestyle() == "-."
    assert list(reference.get_ydata()) == [0.29, 0.29]
    assert len(lines) == 9
    data, note = transfer_lines(df)
    assert [line.kind for line in data].count("untrained") == 2 and "n=128" in note


def test_without_transfer_rows_nothing_changes(tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    write_rows(folder / "rows.jsonl", realmodel_rows())
    text = build.build_report([folder], heatmap=False, figures=["realmodel"]).read_text()
    assert "## Before / after transfer" not in text and "transfer_cosine" not in text
    assert not list((folder / "report").glob("transfer*"))
    df = prepare(pd.DataFrame(realmodel_rows()))
    assert transfer_markdown(df) == [] and plot_transfer(df, tmp_path) == []
    assert transfer_pairs(df).empty
    # the real-model figure draws the same lines with or without transfer rows beside
    for name, rows in (("alone", realmodel_rows()), ("mixed", realmodel_rows() + transfer_rows())):
        write_rows(tmp_path / name / "rows.jsonl", rows)
        build.build_report([tmp_path / name], heatmap=False, figures=["realmodel"])
    assert (tmp_path / "alone" / "report" / "realmodel.png").read_bytes() == (
        tmp_path / "mixed" / "report" / "realmodel.png"
    ).read_bytes()


def test_a_missing_stage_reads_dash_and_is_listed(tmp_path: Path) -> None:
    rows = [r for r in transfer_rows() if r["variant"] == "performer"]
    after = next(r for r in rows if r["stage"] == "after")
    after |= {"status": "nan", "reason": "variant model's embeddings contain NaN/Inf"}
    text = "\n".join(transfer_markdown(prepare(pd.DataFrame(rows))))
    assert "| 0.5 → – |" in _row_of(text, "| performer | nb_features | 32 |")
    assert "- performer: nan: variant model's embeddings contain NaN/Inf" in text


def test_results_csv_round_trip(tmp_path: Path) -> None:
    flat_frame(pd.DataFrame(transfer_rows())).to_csv(tmp_path / "results.csv", index=False)
    back = transfer_pairs(prepare(read_rows([tmp_path / "results.csv"])))
    direct = transfer_pairs(prepare(pd.DataFrame(transfer_rows())))
    assert len(back) == len(direct) == 4
    columns = ["embed_cosine_after", "layer_out_rel_err_max_before", "fit_params_after"]
    pd.testing.assert_frame_equal(back[columns], direct[columns])
    assert list(back["settings"]) == list(direct["settings"])
