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
from harness.report.markdown import failures_markdown, fmt
from harness.report.style import inputs_label
from harness.tasks.attention.markdown import (
    divergence_markdown,
    fitted_inputs_markdown,
    summary_markdown,
)
from harness.tasks.realmodel.report_markdown import realmodel_markdown

pytestmark = pytest.mark.slow

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
    assert "realmodel" not in text  # no real-model rows: no real-model section, no figure
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


# ------------------------------------------------------------------ issue 13: what tables say
def _rows(variant: str, fn, lengths=(256, 512, 1024, 2048, 4096), limit=None, **extra) -> list:
    """fwd rows with time = memory = fn(n); from length ``limit[1]`` on, status ``limit[0]``."""
    out = []
    for n in lengths:
        row = {"variant": variant, "params": {}, "kv_len": n, "q_len": n, "pass": "fwd",
               "device": "cpu", "host": "h", "status": "ok",
               "point_id": f"{variant}{n}{extra.get('inputs')}",
               "time_ms": fn(n), "peak_mem_bytes": 1e3 * fn(n), **extra}  # fmt: skip
        if limit and n >= limit[1]:
            row.update(status=limit[0], time_ms=None, peak_mem_bytes=None)
        out.append(complete_row(row))
    return out


def _summary(*groups: list) -> str:
    return summary_markdown(scaling.summary_table(pd.DataFrame(sum(groups, []))))


def _cells(text: str, series: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {series} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_a_crossover_below_the_first_length_reads_as_a_bound() -> None:
    text = _summary(_rows("full", lambda n: n**2 / 1e4), _rows("linear", lambda n: n / 1e3))
    assert _cells(text, "linear")[3] == "≤ 256"  # faster than full from the first length
    text = _summary(_rows("full", lambda n: n**2 / 1e4), _rows("linear", lambda n: n / 10))
    assert _cells(text, "linear")[3] == "1000"  # a real crossover is interpolated


def test_the_limit_column_says_budget_or_oom_whichever_happened() -> None:
    budget = {"memory_budget_bytes": 16e9}
    refused = _rows("full", lambda n: n**2, limit=("over_budget", 2048), **budget)
    failed = _rows("sdpa", lambda n: n**2, limit=("oom", 4096))
    fine = _rows("linear", lambda n: n)
    text = _summary(refused, fine)
    assert "| largest n within budget (16 GB) |" in text and "OOM" not in text
    assert _cells(text, "full")[7] == "1024" and _cells(text, "linear")[7] == "≥ 4096 (all fit)"
    text = _summary(failed, fine)
    assert "| largest n before OOM |" in text and _cells(text, "sdpa")[7] == "2048"
    text = _summary(refused, failed, fine)
    assert "| largest n within budget (16 GB) or before OOM |" in text
    assert _cells(text, "full")[7] == "1024 (budget)" and _cells(text, "sdpa")[7] == "2048 (OOM)"
    # the failures section counts the two apart
    df = prepare(pd.DataFrame(refused + failed))
    failures = failures_markdown(df)
    assert "over_budget 2, oom 1" in failures  # two statuses, two counts


def test_slopes_say_their_range_and_give_no_interval_from_three_lengths() -> None:
    few = _rows("full", lambda n: n**2.26, lengths=(256, 512, 1024))
    lengths = tuple(256 * 2**i for i in range(7))
    curved = _rows("nlogn", lambda n: n * math.log(n), lengths=lengths)
    text = _summary(few, curved)
    assert _cells(text, "full")[1] == "2.26 (3 lengths: too few for an interval)"
    assert _cells(text, "nlogn")[1].endswith("over 2048–16384, curved")
    linear = _summary(_rows("linear", lambda n: 5 + n / 400, lengths=lengths))
    assert _cells(linear, "linear")[1] == "1.00 [1.00, 1.00] over 256–16384"


def test_divergence_table_leads_with_total_variation_and_drops_attn_kl() -> None:
    rows = []
    for variant, extra in (
        ("local", {"attn_missing_mass": 0.3, "attn_js": 0.1}),
        ("linformer", {"attn_row_sum_err": 2.5, "attn_negative_mass": 0.7}),
    ):
        rows += _rows(variant, lambda n: n, lengths=(512,), attn_tv=0.5, attn_kl=16.3, **extra)
    text = divergence_markdown(prepare(pd.DataFrame(rows)))
    header = text.splitlines()[2]
    assert header.startswith("| series | total variation (headline) |")
    for name in ("Jensen-Shannon", "exact mass where the variant is zero", "row sum", "negative"):
        assert name in header
    assert "KL" not in text and "16.3" not in text  # attn_kl depended on a clamp floor
    assert "| linformer | 0.5 | – | – | 2.5 | 0.7 |" in text  # js, missing mass absent: –
    old = _rows("local", lambda n: n, lengths=(512,), attn_kl=16.3)  # only attn_kl: no table
    assert divergence_markdown(prepare(pd.DataFrame(old))) == ""


def test_realmodel_table_gives_intervals_discordant_pairs_and_flags() -> None:
    row = {"task": "realmodel", "status": "ok", "knob": "k", "embed_cosine": 0.9,
           "retrieval_top1": 0.8, "retrieval_exact_top1": 0.78, "time_ms": 10.0,
           "exact_time_ms": 9.0, "tflops": 3.5}  # fmt: skip
    new = dict(row, retrieval_pairs=240, retrieval_top1_lo=0.745, retrieval_top1_hi=0.846,
               retrieval_better=7, retrieval_worse=3, retrieval_mcnemar_p=0.344)  # fmt: skip
    rows = [
        complete_row(dict(new, variant="linformer", params={"k": 64}, knob_value=64,
                          trained=False, work_exceeds_exact=False)),
        complete_row(dict(new, variant="nystrom", params={"num_landmarks": 256}, knob_value=256,
                          knob="num_landmarks", work_exceeds_exact=True)),
        complete_row(dict(row, variant="performer", params={"nb_features": 8, "eps": 0.0},
                          knob="nb_features", knob_value=8)),  # older row: no statistics
    ]  # fmt: skip
    text = realmodel_markdown(pd.DataFrame(rows))
    assert "Retrieval over 240 pairs." in text and "TFLOP" not in text and "3.5" not in text
    assert "| linformer untrained | k=64 |" in text
    assert "0.8 [0.745, 0.846] (exact 0.78) | 7 / 3 | 0.34 |" in text
    assert _cells(text, "nystrom")[10] == "yes"
    assert _cells(text, "linformer untrained")[10] == "no"
    older = _cells(text, "performer(eps=0)")
    assert older[5] == "0.8 (exact 0.78)" and older[6] == older[7] == older[10] == "n/a"
    assert older[4] == "n/a"  # no unrelated-text cosine in older rows


def test_realmodel_cosine_has_its_unrelated_text_reference(tmp_path: Path) -> None:
    """Beside every embedding cosine, exact MiniLM's cosine between different texts: a column
    of the table and a grey level in the figure."""
    from harness.tasks.realmodel.report_figures import plot_realmodel

    rows = [
        complete_row({"task": "realmodel", "status": "ok", "variant": "local", "device": "cpu",
                      "host": "h", "knob": "window", "knob_value": w, "params": {"window": w},
                      "embed_cosine": cos, "embed_cosine_unrelated": 0.29})
        for w, cos in ((16, 0.9), (64, 0.97))
    ]  # fmt: skip
    text = realmodel_markdown(pd.DataFrame(rows))
    header = _cells(text, "variant")
    assert header[4] == "cosine of unrelated texts (exact model)"
    assert _cells(text, "local")[2:5] == ["0.9", "–", "0.29"]
    fig = plot_realmodel(pd.DataFrame(rows), tmp_path / "real.png")
    (level,) = [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "baseline_unrelated"]
    assert list(level.get_ydata()) == [0.29, 0.29]
    assert level.get_label() == "exact model, unrelated texts: 0.29"


@pytest.mark.parametrize(
    "name, params, label",
    [
        ("minilm", {"layer": 0}, "MiniLM q,k,v (real text; layer=0)"),
        ("minilm", {}, "MiniLM q,k,v (real text)"),
        ("gaussian", {"temperature": 1.0}, "gaussian (temperature=1)"),
        ("structured", {"fit": {"model": "all-MiniLM-L6-v2"}, "gain": [12.0, 6.0], "v_mean": 0.1},
         "structured (fitted to all-MiniLM-L6-v2, v_mean=0.1)"),
        ("structured", {"fit": {"source": "all-MiniLM-L6-v2 layers 0-5, 16 pydoc passages"}},
         "structured (fitted to all-MiniLM-L6-v2 layers 0-5)"),
        ("structured", {"fit": None, "gain": [1.0]}, "structured"),
    ],
)  # fmt: skip
def test_inputs_labels(name, params, label) -> None:
    assert inputs_label(name, params) == label


def test_report_names_the_inputs_first_and_the_uniform_baseline(tmp_path: Path) -> None:
    real = {"inputs": "minilm", "inputs_params": {"layer": 0}, "baseline_uniform_rel_err": 0.9}
    rows = _rows("local", lambda n: n, rel_err=0.3, **real)
    rows += _rows("local", lambda n: n, rel_err=5.0, inputs="gaussian")[:2]  # fewer
    rows += _rows("full", lambda n: n * n, rel_err=1e-7, exact=True, **real)
    write_rows(tmp_path / "s" / "rows.jsonl", rows)
    path = report.build_report([tmp_path / "s"], tmp_path / "r", heatmap=False, figures=[])
    lines = path.read_text().splitlines()
    results = lines.index("## Results")  # the inputs open the attention section
    inputs = "Accuracy measured on inputs: MiniLM q,k,v (real text; layer=0); gaussian."
    assert lines[results + 2] == inputs
    assert "rel_err at n_ref on inputs MiniLM q,k,v (real text; layer=0)." in lines
    table = "\n".join(lines)
    assert "| uniform attention rel_err |" in table
    cells = _cells(table, "local")
    assert cells[8:10] == ["0.3", "0.9"]  # the error on MiniLM inputs (not pooled with 5.0)


def test_a_fitted_input_is_reported_beside_the_statistics_it_was_fitted_to() -> None:
    fit = {
        "source": "all-MiniLM-L6-v2 layers 0-5 x 12 heads, 16 pydoc passages",
        "real": {"entropy": 4.241, "sink": 0.105, "mass_by_distance": [0.02, 0.08]},
        "structured": {"entropy": 4.287, "sink": 0.095, "mass_by_distance": [0.03, 0.08]},
    }
    rows = _rows("local", lambda n: n, inputs="structured", inputs_params={"fit": fit})
    text = fitted_inputs_markdown(prepare(pd.DataFrame(rows)))
    assert text.startswith("Inputs structured (fitted to all-MiniLM-L6-v2 layers 0-5 x 12 heads)")
    assert "| entropy | 4.24 | 4.29 |" in text and "| sink | 0.105 | 0.095 |" in text
    assert "mass_by_distance" not in text  # lists stay in the rows
    assert fitted_inputs_markdown(prepare(pd.DataFrame(_rows("local", lambda n: n)))) == ""
