"""Figures from synthetic rows whose shape is known: files, series, point counts, oom markers.

:func:`synthetic_rows` (also used by test_report.py) builds a realistic sweep: five variants
over seq_len 256..16384 on two devices, with out-of-memory points, a knob sweep and a
temperature sweep at n = 4096.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from harness.analysis import scaling
from harness.analysis.rows import complete_row
from harness.report import figures as plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEQ_LENS = [256, 512, 1024, 2048, 4096, 8192, 16384]
DEFAULT_KNOB = {"local": 128, "linformer": 256, "performer": 256}
KNOB_NAME = {"local": "window", "linformer": "k", "performer": "nb_features"}
DEVICES = {
    # device, device_name, host, speed factor, memory limit (bytes) for full attention
    "cpu": ("cpu", "Intel Xeon", "host-a", 1.0, 4 * 2**30),
    "cuda": ("cuda", "NVIDIA H100", "host-b", 0.02, 20 * 2**30),
}


def _model(variant: str, n: int, knob: int | None, temperature: float) -> dict[str, float]:
    """Time (ms), peak memory (bytes) and error of a variant at length n (known exponents)."""
    heads = 8
    if variant == "full":
        t, mem, err = 2e-7 * n**2, 4.0 * heads * n * n * 1.5, 1e-7
    elif variant == "sdpa":
        t, mem, err = 1.2e-7 * n**2, 4.0 * heads * n * n, 1.2e-7
    elif variant == "local":
        t, mem = 3e-4 * n * (2 * knob + 1) / 257, 4.0 * heads * n * (2 * knob + 1)
        err = 0.3 * math.sqrt(128 / knob) * temperature**0.5
    elif variant == "linformer":
        t, mem = 4e-5 * n * knob / 128 + 0.05, 4.0 * heads * n * knob * 2
        err = 0.4 * math.sqrt(64 / knob) * (n / 1024) ** 0.1 * temperature**0.7
    else:  # performer
        t, mem = 6e-5 * n * knob / 256 + 0.1, 4.0 * heads * n * knob * 3
        err = 0.15 * math.sqrt(256 / knob) * temperature**1.2
    return {"time_ms": t, "peak_mem_bytes": mem, "rel_err": err}


def synthetic_rows(devices: tuple[str, ...] = ("cpu", "cuda"), seed: int = 0) -> list[dict]:
    """Rows of a realistic sweep (see the module docstring); times carry 2% noise."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    points = []  # (variant, knob, n, temperature)
    for variant in ("full", "sdpa", "local", "linformer", "performer"):
        knob = DEFAULT_KNOB.get(variant)
        points += [(variant, knob, n, 1.0) for n in SEQ_LENS]
        if knob:
            points += [(variant, k, 4096, 1.0) for k in (32, 64, 512) if k != knob]
        points += [(variant, knob, 4096, t) for t in (0.25, 0.5, 2.0, 4.0)]
    for dev in devices:
        device, name, host, speed, limit = DEVICES[dev]
        for variant, knob, n, temperature in points:
            params = {KNOB_NAME[variant]: knob} if knob else {}
            m = _model(variant, n, knob, temperature)
            for pass_, factor in (("fwd", 1.0), ("bwd", 2.5), ("fwd_bwd", 3.5)):
                row = {
                    "run_id": "synthetic",
                    "experiment": "scaling",
                    "point_id": f"{variant}-{knob}-{n}-{temperature}",
                    "variant": variant,
                    "params": params,
                    "device": device,
                    "device_name": name,
                    "cpu_model": "Intel Xeon",
                    "host": host,
                    "dtype": "float32",
                    "threads": 2,
                    "batch": 1,
                    "heads": 8,
                    "q_len": n,
                    "kv_len": n,
                    "head_dim": 64,
                    "causal": False,
                    "inputs": "gaussian",
                    "inputs_params": {"temperature": temperature},
                    "seed": 0,
                    "pass": pass_,
                    "torch": "2.5.0",
                    "cuda": None,
                    "xformers": None,
                    "git_commit": "abc123",
                    "time": "2026-01-01T00:00:00",
                }
                mem = m["peak_mem_bytes"] * (1.0 if pass_ == "fwd" else 2.0)
                if variant in ("full", "sdpa") and mem > limit * (1 if variant == "full" else 4):
                    row.update(
                        status="oom",
                        reason=f"analytic estimate {mem / 2**30:.1f} GiB exceeds memory_budget_gb",
                    )
                else:
                    time_ms = m["time_ms"] * factor * speed * float(rng.lognormal(0, 0.02))
                    # Exact kernels reach a steady share of the matmul rate; the
                    # approximations' small matmuls only fill the machine as n grows.
                    share = 0.3 if variant in ("full", "sdpa") else 0.25 * n / (n + 2048)
                    row.update(
                        status="ok",
                        time_ms=time_ms,
                        peak_mem_bytes=mem,
                        matmul_tflops=1.5 / speed,
                        tflops=share * 1.5 / speed,
                        flops=share * 1.5e12 / speed * time_ms * 1e-3,
                    )
                    if pass_ == "fwd":
                        row["rel_err"] = m["rel_err"] * float(rng.lognormal(0, 0.03))
                rows.append(complete_row(row))
    # One unsupported and one error point, so reports have reasons to count.
    extra = dict(
        rows[0],
        variant="linformer",
        params={"k": 256},
        point_id="unsup",
        time_ms=None,
        status="unsupported",
        reason="linformer: causal attention is not supported",
    )
    rows.append(complete_row(extra))
    rows.append(
        complete_row(dict(extra, point_id="err", status="error", reason="RuntimeError: boom"))
    )
    return rows


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return scaling.prepare(pd.DataFrame(synthetic_rows()))


@pytest.fixture(scope="module")
def cpu(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["device"] == "cpu"]


def assert_png(path: Path) -> None:
    assert path.exists()
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def data_lines(ax) -> dict[str, Any]:
    """Lines drawn for series (not guides, not oom markers), by label."""
    return {
        ln.get_label(): ln
        for ln in ax.get_lines()
        if ln.get_gid() not in ("guide", "oom")
        and not ln.get_label().startswith("_")
        and len(ln.get_xdata())
    }


def test_colors_are_stable_and_distinct() -> None:
    builtins = list(plots.PALETTE)
    assert len({plots.color_for(n) for n in builtins}) == len(builtins)
    assert plots.color_for("my_plugin") == plots.color_for("my_plugin")
    assert plots.color_for("my_plugin") in plots.EXTRA_COLORS


@pytest.mark.parametrize("pass_", ["fwd", "fwd_bwd"])
def test_time_figure_series_points_and_oom(cpu: pd.DataFrame, tmp_path: Path, pass_) -> None:
    path = tmp_path / "time.png"
    fig = plots.plot_time(cpu, path, pass_)
    assert_png(path)
    ax = fig.axes[0]
    lines = data_lines(ax)
    ok = cpu[(cpu["pass"] == pass_) & (cpu["status"] == "ok")]
    for series, rows in ok.groupby("series"):
        n_lengths = rows["seq_len"].nunique()
        if n_lengths < 2:  # knob-sweep points at one length: no line in a vs-seq_len plot
            assert not any(label.startswith(series + ":") for label in lines)
            continue
        (label,) = [lb for lb in lines if lb.split(":")[0] == series]
        assert len(lines[label].get_xdata()) == n_lengths
        assert "slope" in label
        assert lines[label].get_color() == plots.color_for(rows["variant"].iloc[0])
    # oom points are drawn as x markers at their seq_len, one marker per oom length.
    oom = cpu[(cpu["pass"] == pass_) & (cpu["status"] == "oom")]
    markers = [ln for ln in ax.get_lines() if ln.get_gid() == "oom"]
    assert sum(len(ln.get_xdata()) for ln in markers) == len(oom.groupby(["series", "seq_len"]))
    assert all(ln.get_marker() == "x" for ln in markers)
    full_oom = sorted(oom.loc[oom["variant"] == "full", "seq_len"])
    full_marker = [ln for ln in markers if ln.get_label() == "_oom full"][0]
    assert sorted(full_marker.get_xdata()) == full_oom
    assert sum(ln.get_gid() == "guide" for ln in ax.get_lines()) == 2
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_memory_figure(cpu: pd.DataFrame, tmp_path: Path) -> None:
    fig = plots.plot_memory(cpu, tmp_path / "mem.png")
    assert_png(tmp_path / "mem.png")
    lines = data_lines(fig.axes[0])
    full = [ln for lb, ln in lines.items() if lb.startswith("full:")][0]
    ok = cpu[(cpu["pass"] == "fwd") & (cpu["status"] == "ok") & (cpu["variant"] == "full")]
    np.testing.assert_allclose(
        full.get_ydata(), ok.groupby("seq_len")["peak_mem_bytes"].median() / 2**20
    )


def test_error_figures(cpu: pd.DataFrame, tmp_path: Path) -> None:
    fig = plots.plot_error(cpu, tmp_path / "err.png")
    assert_png(tmp_path / "err.png")
    lines = data_lines(fig.axes[0])
    # exact variants sit at the rounding floor and are named in the subtitle, not drawn
    assert {lb.split("(")[0] for lb in lines} == {"local", "linformer", "performer"}
    assert "exact variants (full, sdpa" in fig.axes[0].get_title(loc="left")
    assert all(len(ln.get_xdata()) == len(scaling_lengths(cpu, lb)) for lb, ln in lines.items())

    fig = plots.plot_error_vs_temperature(cpu, tmp_path / "temp.png")
    assert_png(tmp_path / "temp.png")
    lines = data_lines(fig.axes[0])
    assert len(lines) == 3 and all(len(ln.get_xdata()) == 5 for ln in lines.values())

    fig = plots.plot_error_vs_knob(cpu, tmp_path / "knob.png")
    assert_png(tmp_path / "knob.png")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_xlabel() for ax in visible] == ["k", "window", "nb_features"]
    for ax in visible:
        (line,) = ax.get_lines()
        assert len(line.get_xdata()) == 4  # default knob and three others at n = 4096


def scaling_lengths(df: pd.DataFrame, series: str) -> list[float]:
    rows = df[(df["series"] == series) & (df["pass"] == "fwd") & (df["status"] == "ok")]
    rows = rows[rows["inputs_params"].map(lambda p: p.get("temperature") == 1.0)]
    return sorted(rows["seq_len"].unique())


def test_tradeoff_and_pareto(cpu: pd.DataFrame, tmp_path: Path) -> None:
    assert plots.pareto_front([1, 2, 3, 4], [4, 5, 1, 0.5]) == [0, 2, 3]
    fig = plots.plot_tradeoff(cpu, tmp_path / "tradeoff.png", seq_len=4096)
    assert_png(tmp_path / "tradeoff.png")
    ax = fig.axes[0]
    at = cpu[(cpu["seq_len"] == 4096) & (cpu["pass"] == "fwd") & (cpu["status"] == "ok")]
    exact = at.loc[at["variant"].isin(["full", "sdpa"]), "series"].nunique()
    assert len(ax.collections) == at["series"].nunique() - exact  # a point per approximation
    assert sum(ln.get_gid() == "exact" for ln in ax.get_lines()) == exact  # exact: vertical
    (front,) = [ln for ln in ax.get_lines() if ln.get_gid() == "pareto"]
    assert 2 <= len(front.get_xdata()) <= at["series"].nunique()


def test_rate_figure(cpu: pd.DataFrame, tmp_path: Path) -> None:
    fig = plots.plot_rate(cpu, tmp_path / "rate.png")
    assert_png(tmp_path / "rate.png")
    lines = data_lines(fig.axes[0])
    assert len(lines) == 5  # the five default-configuration series span several lengths
    full = [ln for lb, ln in lines.items() if lb == "full"][0]
    np.testing.assert_allclose(full.get_ydata(), 0.3)  # 30% of the matmul rate


def test_heatmaps_from_synthetic_matrices(tmp_path: Path) -> None:
    tokens = ["[CLS]", "the", "cat", "sat", "on", "the", "mat", ".", "[SEP]"]
    rng = np.random.default_rng(0)
    exact = rng.dirichlet(np.ones(9), size=9)
    local = np.tril(np.triu(exact, -2), 2)
    fig = plots.plot_attention_heatmaps(
        tokens, exact, {"local": local, "performer": exact + 0.01}, tmp_path / "heat.png", "t"
    )
    assert_png(tmp_path / "heat.png")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3
    assert [t.get_text() for t in panels[0].get_xticklabels()] == tokens
    np.testing.assert_allclose(panels[1].images[0].get_array(), local)
    with pytest.raises(ValueError, match="shape"):
        plots.plot_attention_heatmaps(tokens[:3], exact, {}, tmp_path / "bad.png")


def test_realmodel_figure_only_with_rows(cpu: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(plots.SkipFigure):
        plots.plot_realmodel(cpu, tmp_path / "real.png")
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
    fig = plots.plot_realmodel(pd.DataFrame(rows), tmp_path / "real.png")
    assert_png(tmp_path / "real.png")
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
    with pytest.raises(plots.SkipFigure, match="no ok fwd rows"):
        plots.plot_time(rows, tmp_path / "t.png")
    assert not (tmp_path / "t.png").exists()


def test_plot_all_splits_devices(frame: pd.DataFrame, tmp_path: Path) -> None:
    # two figures per device keep the test fast; each figure type is drawn by its own test
    results = plots.plot_all(frame, tmp_path, only=["time_fwd", "realmodel"])
    drawn = [r for r in results if r.path]
    assert {r.device for r in drawn} == set(frame["device_key"])
    for r in drawn:
        assert "__" in r.path.name  # device suffix with two devices
        assert_png(r.path)
    skipped = {r.name for r in results if r.skipped}
    assert skipped == {"realmodel"}


def test_realmodel_rows_draw_no_empty_scaling_figure(tmp_path: Path) -> None:
    # A realmodel sweep: whole-model time at one length per point. The time figure must be
    # skipped with a reason (it once came out as empty axes), the realmodel figure drawn.
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
    results = {r.name: r for r in plots.plot_all(pd.DataFrame(rows), tmp_path)}
    assert results["realmodel"].path is not None
    assert results["time_fwd"].path is None and results["time_fwd"].skipped
    assert not (tmp_path / "time_fwd.png").exists()
