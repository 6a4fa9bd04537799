"""Figures from synthetic rows whose shape is known: files, series, point counts, oom markers.

The rows come from the ``sweep_rows`` fixture (conftest.py): five variants over kv_len
256..16384 on two devices, with out-of-memory points, a knob sweep and a temperature sweep at
n = 4096.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from harness.analysis.rows import complete_row, write_rows
from harness.analysis.series import prepare
from harness.report import build, style
from harness.report.style import SkipFigure
from harness.tasks.attention import figures_accuracy, figures_scaling
from harness.tasks.attention.figures import FIGURES, plot_all
from harness.tasks.realmodel import report_figures as figures_realmodel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def frame(sweep_rows) -> pd.DataFrame:
    return prepare(pd.DataFrame(sweep_rows()))


@pytest.fixture(scope="module")
def cpu(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["device"] == "cpu"]


def data_lines(ax) -> dict[str, Any]:
    """Lines drawn for series (not guides, limit markers or baselines), by label."""
    return {
        ln.get_label(): ln
        for ln in ax.get_lines()
        if ln.get_gid() not in ("guide", "oom", "over_budget", *BASELINES)
        and not ln.get_label().startswith("_")
        and len(ln.get_xdata())
    }


BASELINES = ("baseline_zeros", "baseline_uniform")


def wave2(rows: list[dict]) -> list[dict]:
    """The synthetic sweep as today's rows: full refused over a 16 GB budget instead of oom,
    linformer untrained, performer with eps, the uniform baseline (growing with n) on every
    forward row, and real-model inputs where the temperature is 1."""
    out = []
    for row in rows:
        row = dict(row)
        if row["variant"] == "full" and row["status"] == "oom":
            row.update(status="over_budget", memory_budget_bytes=16e9)
        if row["variant"] == "linformer":
            row["trained"] = False
        if row["variant"] == "performer":
            row["params"] = {**row["params"], "eps": 0.0}
        if row["pass"] == "fwd" and row["status"] == "ok":
            row.update(
                baseline_zeros_rel_err=1.0, baseline_uniform_rel_err=0.8 + row["kv_len"] / 1e5
            )
        if row["inputs_params"] == {"temperature": 1.0}:
            row.update(inputs="minilm", inputs_params={"layer": 0})
        out.append(complete_row(row))
    return out


@pytest.fixture(scope="module")
def today(sweep_rows) -> pd.DataFrame:
    return prepare(pd.DataFrame(wave2(sweep_rows(devices=("cpu",)))))


def baseline_lines(ax) -> dict[str, Any]:
    lines = {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid() in BASELINES}
    assert list(lines["baseline_zeros"].get_ydata()) == [1.0, 1.0]  # outputting zeros
    return lines


def test_colors_are_stable_and_distinct() -> None:
    builtins = list(style.PALETTE)
    assert len({style.color_for(n) for n in builtins}) == len(builtins)
    assert style.color_for("my_plugin") == style.color_for("my_plugin")
    assert style.color_for("my_plugin") in style.EXTRA_COLORS


@pytest.mark.parametrize("pass_", ["fwd", "fwd_bwd"])
def test_time_figure_series_points_and_oom(
    cpu: pd.DataFrame, tmp_path: Path, pass_, check_png
) -> None:
    path = tmp_path / "time.png"
    fig = figures_scaling.plot_time(cpu, path, pass_)
    check_png(path)
    ax = fig.axes[0]
    lines = data_lines(ax)
    ok = cpu[(cpu["pass"] == pass_) & (cpu["status"] == "ok")]
    for series, rows in ok.groupby("series"):
        n_lengths = rows["kv_len"].nunique()
        if n_lengths < 2:  # knob-sweep points at one length: no line in a vs-length plot
            assert not any(label.startswith(series + ":") for label in lines)
            continue
        (label,) = [lb for lb in lines if lb.split(":")[0] == series]
        assert len(lines[label].get_xdata()) == n_lengths
        assert "slope" in label
        assert lines[label].get_color() == style.color_for(rows["variant"].iloc[0])
    # oom points are drawn as x markers at their kv_len, one marker per oom length.
    oom = cpu[(cpu["pass"] == pass_) & (cpu["status"] == "oom")]
    markers = [ln for ln in ax.get_lines() if ln.get_gid() == "oom"]
    assert sum(len(ln.get_xdata()) for ln in markers) == len(oom.groupby(["series", "kv_len"]))
    assert all(ln.get_marker() == "x" for ln in markers)
    full_oom = sorted(oom.loc[oom["variant"] == "full", "kv_len"])
    full_marker = [ln for ln in markers if ln.get_label() == "_oom full"][0]
    assert sorted(full_marker.get_xdata()) == full_oom
    assert sum(ln.get_gid() == "guide" for ln in ax.get_lines()) == 2
    plt.close(fig)


def test_memory_figure(cpu: pd.DataFrame, tmp_path: Path, check_png) -> None:
    fig = figures_scaling.plot_memory(cpu, tmp_path / "mem.png")
    check_png(tmp_path / "mem.png")
    lines = data_lines(fig.axes[0])
    full = [ln for lb, ln in lines.items() if lb.startswith("full:")][0]
    ok = cpu[(cpu["pass"] == "fwd") & (cpu["status"] == "ok") & (cpu["variant"] == "full")]
    np.testing.assert_allclose(
        full.get_ydata(), ok.groupby("kv_len")["peak_mem_bytes"].median() / 2**20
    )


def test_error_figures(cpu: pd.DataFrame, tmp_path: Path, check_png) -> None:
    fig = figures_accuracy.plot_error(cpu, tmp_path / "err.png")
    check_png(tmp_path / "err.png")
    lines = data_lines(fig.axes[0])
    # exact variants sit at the rounding floor and are named in the subtitle, not drawn
    assert {lb.split("(")[0] for lb in lines} == {"local", "linformer", "performer"}
    assert "exact variants (full, sdpa" in fig.axes[0].get_title(loc="left")
    assert all(len(ln.get_xdata()) == len(scaling_lengths(cpu, lb)) for lb, ln in lines.items())

    fig = figures_accuracy.plot_error_vs_temperature(cpu, tmp_path / "temp.png")
    check_png(tmp_path / "temp.png")
    lines = data_lines(fig.axes[0])
    assert len(lines) == 3 and all(len(ln.get_xdata()) == 5 for ln in lines.values())

    fig = figures_accuracy.plot_error_vs_knob(cpu, tmp_path / "knob.png")
    check_png(tmp_path / "knob.png")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_xlabel() for ax in visible] == ["k", "window", "nb_features"]
    for ax in visible:
        (line,) = [ln for ln in ax.get_lines() if ln.get_gid() not in BASELINES]
        assert len(line.get_xdata()) == 4  # default knob and three others at n = 4096


def scaling_lengths(df: pd.DataFrame, series: str) -> list[float]:
    rows = df[(df["series"] == series) & (df["pass"] == "fwd") & (df["status"] == "ok")]
    rows = rows[rows["inputs_params"].map(lambda p: p.get("temperature") == 1.0)]
    return sorted(rows["kv_len"].unique())


def test_tradeoff_and_pareto(cpu: pd.DataFrame, tmp_path: Path, check_png) -> None:
    assert figures_accuracy.pareto_front([1, 2, 3, 4], [4, 5, 1, 0.5]) == [0, 2, 3]
    fig = figures_accuracy.plot_tradeoff(cpu, tmp_path / "tradeoff.png", kv_len=4096)
    check_png(tmp_path / "tradeoff.png")
    ax = fig.axes[0]
    at = cpu[(cpu["kv_len"] == 4096) & (cpu["pass"] == "fwd") & (cpu["status"] == "ok")]
    exact = at.loc[at["variant"].isin(["full", "sdpa"]), "series"].nunique()
    assert len(ax.collections) == at["series"].nunique() - exact  # a point per approximation
    assert sum(ln.get_gid() == "exact" for ln in ax.get_lines()) == exact  # exact: vertical
    (front,) = [ln for ln in ax.get_lines() if ln.get_gid() == "pareto"]
    assert 2 <= len(front.get_xdata()) <= at["series"].nunique()


def test_rate_figure(cpu: pd.DataFrame, tmp_path: Path, check_png) -> None:
    fig = figures_scaling.plot_rate(cpu, tmp_path / "rate.png")
    check_png(tmp_path / "rate.png")
    lines = data_lines(fig.axes[0])
    assert len(lines) == 5  # the five default-configuration series span several lengths
    full = [ln for lb, ln in lines.items() if lb == "full"][0]
    np.testing.assert_allclose(full.get_ydata(), 0.3)  # 30% of the matmul rate


def test_heatmaps_from_synthetic_matrices(tmp_path: Path, check_png) -> None:
    tokens = ["[CLS]", "the", "cat", "sat", "on", "the", "mat", ".", "[SEP]"]
    rng = np.random.default_rng(0)
    exact = rng.dirichlet(np.ones(9), size=9)
    local = np.tril(np.triu(exact, -2), 2)
    fig = figures_realmodel.plot_attention_heatmaps(
        tokens, exact, {"local": local, "performer": exact + 0.01}, tmp_path / "heat.png", "t"
    )
    check_png(tmp_path / "heat.png")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3
    assert [t.get_text() for t in panels[0].get_xticklabels()] == tokens
    np.testing.assert_allclose(panels[1].images[0].get_array(), local)
    with pytest.raises(ValueError, match="shape"):
        figures_realmodel.plot_attention_heatmaps(tokens[:3], exact, {}, tmp_path / "bad.png")


def test_realmodel_figure_only_with_rows(cpu: pd.DataFrame, tmp_path: Path, check_png) -> None:
    with pytest.raises(SkipFigure):
        figures_realmodel.plot_realmodel(cpu, tmp_path / "real.png")
    rows = []
    for variant, knob, values in (
        ("local", "window", [4, 16, 64]),
        ("performer", "nb_features", [16, 64]),
    ):
        for value in values:
            rows.append(
                complete_row(
                    {
                        "variant": variant,
                        "device": "cpu",
                        "host": "h",
                        "status": "ok",
                        "experiment": "realmodel",
                        "knob": knob,
                        "knob_value": value,
                        "embed_cosine": 1 - 1 / value,
                    }
                )
            )
    fig = figures_realmodel.plot_realmodel(pd.DataFrame(rows), tmp_path / "real.png")
    check_png(tmp_path / "real.png")
    lines = data_lines(fig.axes[0])
    assert {lb: len(ln.get_xdata()) for lb, ln in lines.items()} == {
        "local (window)": 3,
        "performer (nb_features)": 2,
    }


def test_absent_data_is_skipped_with_reason(tmp_path: Path) -> None:
    rows = pd.DataFrame(
        [
            complete_row(
                {
                    "variant": "full",
                    "status": "oom",
                    "pass": "fwd",
                    "q_len": 256,
                    "kv_len": 256,
                    "device": "cpu",
                }
            )
        ]
    )
    with pytest.raises(SkipFigure, match="no ok fwd rows"):
        figures_scaling.plot_time(rows, tmp_path / "t.png")
    assert not (tmp_path / "t.png").exists()


def test_plot_all_splits_devices(frame: pd.DataFrame, tmp_path: Path, check_png) -> None:
    # two figures per device keep the test fast; each figure type is drawn by its own test
    results = plot_all(frame, tmp_path, only=["time_fwd", "realmodel"])
    drawn = [r for r in results if r.path]
    assert {r.device for r in drawn} == set(frame["device_key"])
    assert {r.name for r in results} == {"time_fwd"} and len(drawn) == len(results)
    for r in drawn:
        assert "__" in r.path.name  # device suffix with two devices
        check_png(r.path)
    assert "realmodel" not in FIGURES  # the realmodel section draws it


def test_realmodel_rows_draw_no_empty_scaling_figure(tmp_path: Path) -> None:
    # A realmodel sweep: whole-model time at one length per point. Its report draws the
    # realmodel figure and no attention time figure (which would come out as empty axes).
    rows = [
        complete_row(
            {
                "task": "realmodel",
                "variant": v,
                "device": "cpu",
                "host": "h",
                "status": "ok",
                "pass": "fwd",
                "q_len": 512,
                "kv_len": 512,
                "batch": 4,
                "heads": 12,
                "head_dim": 32,
                "dtype": "float32",
                "causal": False,
                "time_ms": 1500.0 + x,
                "knob": "window",
                "knob_value": x,
                "embed_cosine": 1 - 1 / x,
                "params": {"window": x},
            }  # fmt: skip
        )
        for v in ("local", "longformer")
        for x in (8, 64)
    ]
    write_rows(tmp_path / "rows.jsonl", rows)
    path = build.build_report([tmp_path], heatmap=False, figures=["time_fwd", "realmodel"])
    assert (path.parent / "realmodel.png").exists()
    assert not (path.parent / "time_fwd.png").exists() and "time_fwd" not in path.read_text()


def _heatmap_file(folder: Path, layer: int, panels: dict, skipped=(), tokens=("a", "b", "c")):
    folder.mkdir(parents=True)
    n = len(tokens)
    data = {
        "sentence": "a b c",
        "layer": layer,
        "head": 0,
        "tokens": list(tokens),
        "exact": np.full((n, n), 1 / n).tolist(),
        "panels": [
            {"variant": label.split(" ")[0], "label": label, "matrix": np.full((n, n), v).tolist()}
            for label, v in panels.items()
        ],
        "skipped": [{"variant": v, "reason": r} for v, r in skipped],
    }
    (folder / "heatmap.json").write_text(json.dumps(data))


def test_heatmaps_are_drawn_from_files_merged_by_sentence(tmp_path: Path, check_png) -> None:
    sweep = tmp_path / "sweep"
    _heatmap_file(sweep / "0", 0, {"local (window=1)": 0.1}, [("bigbird", "too short")])
    _heatmap_file(sweep / "1", 0, {"local (window=1)": 0.9, "performer (nb_features=4)": 0.2})
    _heatmap_file(sweep / "2", 1, {"nystrom (num_landmarks=2)": 0.3})
    _heatmap_file(sweep / "3", 0, {"linear": 0.5}, tokens=("x", "y"))  # other tokens: skipped
    (sweep / "4").mkdir()
    (sweep / "4" / "heatmap.json").write_text('{"sentence": "a b c"')
    with pytest.warns(UserWarning) as caught:
        groups = figures_realmodel.load_heatmaps(figures_realmodel.find_heatmap_files([sweep]))
    assert any("3/heatmap.json: tokens differ" in str(w.message) for w in caught)
    assert any("4/heatmap.json: not a heatmap file" in str(w.message) for w in caught)
    assert [(g.layer, sorted(g.panels)) for g in groups] == [
        (0, ["local (window=1)", "performer (nb_features=4)"]),
        (1, ["nystrom (num_landmarks=2)"]),
    ]
    assert groups[0].panels["local (window=1)"][1][0][0] == 0.1  # the first file wins
    assert groups[0].not_drawn() == {"bigbird": "too short"}
    with pytest.warns(UserWarning):
        drawn = figures_realmodel.draw_heatmaps([sweep], tmp_path / "out")
    assert [p.name for p, _ in drawn] == ["heatmaps-1.png", "heatmaps-2.png"]
    for path, _ in drawn:
        check_png(path)
    with pytest.raises(SkipFigure, match="no heatmap.json"):
        figures_realmodel.draw_heatmaps([tmp_path / "out"], tmp_path / "out")


def test_exactness_is_read_from_rows_not_names(cpu: pd.DataFrame, tmp_path: Path) -> None:
    # a variant no registry knows: the rows alone say it is exact (and that local is not)
    rows = cpu.drop(columns=["series", "device_key"]).copy()
    rows["variant"] = rows["variant"].replace({"full": "unknown_exact"})
    rows.loc[rows["variant"] == "local", "exact"] = True
    fig = figures_accuracy.plot_error(rows, tmp_path / "err.png")
    labels = {lb.split("(")[0] for lb in data_lines(fig.axes[0])}
    assert labels == {"linformer", "performer"}
    assert "exact variants (local, sdpa, unknown_exact" in fig.axes[0].get_title(loc="left")
    plt.close(fig)


def test_error_figure_draws_both_baselines_and_names_the_inputs(today, tmp_path: Path) -> None:
    fig = figures_accuracy.plot_error(today, tmp_path / "err.png")
    ax = fig.axes[0]
    uniform = baseline_lines(ax)["baseline_uniform"]
    ok = today[(today["pass"] == "fwd") & (today["status"] == "ok") & ~today["exact"]]
    ok = ok[ok["inputs"] == "minilm"]
    expected = ok.groupby("kv_len")["baseline_uniform_rel_err"].median()
    np.testing.assert_allclose(uniform.get_xdata(), expected.index)  # per length: it varies
    np.testing.assert_allclose(uniform.get_ydata(), expected.to_numpy())
    assert ax.get_ylim()[1] > 1.0  # both baselines in view
    title = ax.get_title(loc="left").replace("\n", " ")  # wrapped
    assert "inputs MiniLM q,k,v (real text; layer=0)" in title
    labels = set(data_lines(ax))
    assert "linformer(k=256) untrained" in labels
    assert "performer(eps=0, nb_features=256)" in labels
    plt.close(fig)


def test_tradeoff_and_knob_figures_draw_the_baselines(today, tmp_path: Path) -> None:
    fig = figures_accuracy.plot_tradeoff(today, tmp_path / "t.png", kv_len=4096)
    ax = fig.axes[0]
    level = baseline_lines(ax)["baseline_uniform"].get_ydata()
    np.testing.assert_allclose(level, 0.8 + 4096 / 1e5)  # one length: one level
    assert "linformer(k=256) untrained" in {c.get_label() for c in ax.collections}
    plt.close(fig)
    fig = figures_accuracy.plot_error_vs_knob(today, tmp_path / "k.png")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    titles = [ax.get_title() for ax in visible]
    assert titles[0] == "linformer untrained (n = 4096)"  # the label without the knob
    assert titles[2] == "performer(eps=0) (n = 4096)"
    for ax in visible:
        baseline_lines(ax)
        low, high = ax.get_ylim()  # one shared axis: every panel's points and baselines in view
        for line in ax.get_lines():
            assert low < min(line.get_ydata()) and max(line.get_ydata()) < high
    plt.close(fig)


def test_over_budget_is_marked_apart_from_oom(today, tmp_path: Path) -> None:
    rows = today.copy()
    sdpa_long = (rows["variant"] == "sdpa") & (rows["kv_len"] == 16384)
    rows.loc[sdpa_long, "status"] = "oom"  # a real allocation failure next to the refusals
    fig = figures_scaling.plot_time(rows, tmp_path / "t.png", "fwd_bwd")
    ax = fig.axes[0]
    marks = {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid() in ("oom", "over_budget")}
    refused = rows[(rows["pass"] == "fwd_bwd") & (rows["status"] == "over_budget")]
    assert sorted(marks["over_budget"].get_xdata()) == sorted(refused["kv_len"])
    assert list(marks["oom"].get_xdata()) == [16384]
    assert marks["oom"].get_marker() != marks["over_budget"].get_marker()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "over the memory budget (16 GB) (marked at top edge)" in legend
    assert "out of memory (marked at top edge)" in legend
    plt.close(fig)
