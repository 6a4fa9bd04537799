"""attnbench-report: the table matches scaling, clear messages for absent data, corrupt files."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from harness.analysis import scaling
from harness.analysis.rows import complete_row, flat_frame, write_rows
from harness.analysis.series import prepare
from harness.report import build as report
from harness.report.markdown import fmt, realmodel_markdown

FIGURES = ("time_fwd", "memory_fwd", "tradeoff", "realmodel")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, sweep_rows) -> Path:
    """Two job folders of one device, plus a rows file of corrupt lines."""
    root = tmp_path_factory.mktemp("sweep")
    rows = sweep_rows(devices=("cpu",))
    write_rows(root / "0" / "rows.jsonl", rows[: len(rows) // 2])
    write_rows(root / "1" / "rows.jsonl", rows[len(rows) // 2 :])
    (root / "2").mkdir()
    (root / "2" / "rows.jsonl").write_text('{"variant": "full"\nnot json\n')
    return root


@pytest.fixture(scope="module")
def built(sweep: Path) -> Path:
    with pytest.warns(UserWarning) as caught:
        # a few figures keep the test fast; test_plots draws every figure type
        path = report.build_report([sweep], heatmap=False, figures=FIGURES)
    named = " ".join(str(w.message) for w in caught)
    assert "2/rows.jsonl:1" in named and "2/rows.jsonl:2" in named  # each corrupt line named
    return path


def test_report_files_and_table(sweep: Path, built: Path, check_png) -> None:
    assert built == sweep / "report" / "report.md"
    text = built.read_text()
    pngs = sorted((sweep / "report").glob("*.png"))
    assert {p.stem for p in pngs} == {"time_fwd", "memory_fwd", "tradeoff"}
    for png in pngs:
        check_png(png)
        assert f"]({png.name})" in text  # embedded
    assert "realmodel: no realmodel rows" in text  # skipped with its reason
    # The markdown table carries scaling's numbers.
    with pytest.warns(UserWarning):
        df = prepare(report.load_rows([sweep]))
    table = scaling.summary_table(df).set_index("series")
    for series in ("full", "local(window=128)", "performer(nb_features=256)"):
        r = table.loc[series]
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {series} |"))
        assert f"{r['time_slope']:.2f} [{r['time_ci_low']:.2f}, {r['time_ci_high']:.2f}]" in line
        assert f"{r['mem_slope']:.2f}" in line
        if not math.isnan(r["time_cross_full"]):
            assert fmt(r["time_cross_full"], 4) in line
    full_line = next(ln for ln in text.splitlines() if ln.startswith("| full |"))
    assert f"| {int(table.loc['full', 'max_ok_kv_len'])} |" in full_line
    assert "oom" in text and "exceeds memory_budget_gb" in text  # reasons counted
    assert "linformer: causal attention is not supported" in text
    assert "Intel Xeon" in text and "torch" in text  # environment


def test_two_devices_give_two_sections(tmp_path: Path, sweep_rows) -> None:
    rows = [r for r in sweep_rows() if r["kv_len"] in (1024, 4096)]
    write_rows(tmp_path / "a" / "rows.jsonl", [r for r in rows if r["device"] == "cpu"])
    write_rows(tmp_path / "b" / "rows.jsonl", [r for r in rows if r["device"] == "cuda"])
    folders = [tmp_path / "a", tmp_path / "b"]
    report.build_report(folders, tmp_path / "r", heatmap=False, figures=["time_fwd"])
    text = (tmp_path / "r" / "report.md").read_text()
    assert "## Intel Xeon @ host-a" in text and "## NVIDIA H100 @ host-b" in text
    assert (tmp_path / "r" / "time_fwd__nvidia-h100-host-b.png").exists()


def test_results_csv_is_accepted(tmp_path: Path, sweep_rows) -> None:
    rows = [r for r in sweep_rows(devices=("cpu",)) if r["kv_len"] in (1024, 4096)]
    flat_frame(pd.DataFrame(rows)).to_csv(tmp_path / "results.csv", index=False)
    df = report.load_rows([tmp_path])
    assert len(df) == len(rows)
    table = scaling.summary_table(df)
    assert set(table["variant"]) == {"full", "sdpa", "local", "linformer", "performer"}
    # params come back as mappings, so the series keep their knob values
    assert {"local(window=32)", "local(window=128)"} <= set(table["series"])
    assert df["params"].map(type).eq(dict).all()


def test_empty_folder_is_a_clear_message(tmp_path: Path, capsys) -> None:
    assert report.cli([str(tmp_path), "--no-heatmap"]) == 1
    assert f"no results yet in {tmp_path}" in capsys.readouterr().err


def test_missing_columns_is_a_clear_message(tmp_path: Path, capsys) -> None:
    write_rows(tmp_path / "rows.jsonl", [complete_row({"time_ms": 1.0})])
    assert report.cli([str(tmp_path), "--no-heatmap"]) == 1
    err = capsys.readouterr().err
    assert "lack the columns variant, status" in err and "Traceback" not in err


def test_realmodel_table_lists_each_variant_and_knob() -> None:
    rows = []
    for variant, knob, value, cos, top1 in (
        ("local", "window", 4, 0.91, 0.5),
        ("local", "window", 64, 0.999, 0.75),
        ("performer", "nb_features", 256, 0.97, 0.625),
    ):
        rows.append(
            complete_row(
                {
                    "task": "realmodel",
                    "variant": variant,
                    "status": "ok",
                    "knob": knob,
                    "knob_value": value,
                    "embed_cosine": cos,
                    "embed_cosine_min": cos - 0.01,
                    "retrieval_exact_top1": 0.75,
                    "retrieval_top1": top1,
                    "retrieval_mean_rank": 1.5,
                    "retrieval_agree_top1": top1 / 0.75,
                    "time_ms": 10.0,
                    "exact_time_ms": 12.0,
                }  # fmt: skip
            )
        )
    rows.append(complete_row({"task": "attention", "variant": "full", "status": "ok"}))
    text = realmodel_markdown(pd.DataFrame(rows))
    lines = [ln for ln in text.splitlines() if ln.startswith("| local") or ln.startswith("| perf")]
    assert len(lines) == 3
    assert "| local | window=4 | 0.91 |" in text and "0.5 (exact 0.75)" in text
    assert "| performer | nb_features=256 | 0.97 |" in text and "10 / 12" in text
    assert realmodel_markdown(pd.DataFrame(rows[-1:])) == ""
