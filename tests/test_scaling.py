"""Scaling functions on synthetic rows whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.analysis import scaling, series
from harness.analysis.rows import complete_row

LENGTHS = [256, 512, 1024, 2048, 4096, 8192]
LONG = LENGTHS + [16384]  # so that 8192 is not the last length


def rows_for(variant: str, fn, lengths=LENGTHS, params=None, oom_from=None, **extra) -> list:
    """fwd rows with time_ms = peak_mem_bytes = fn(n); status oom from ``oom_from`` on."""
    out = []
    for n in lengths:
        oom = oom_from is not None and n >= oom_from
        row = {
            "variant": variant,
            "params": params or {},
            "q_len": n,
            "kv_len": n,
            "pass": "fwd",
            "device": "cpu",
            "host": "h",
            "dtype": "float32",
            "causal": False,
            "batch": 1,
            "heads": 8,
            "head_dim": 64,
            "point_id": f"{variant}{params}{n}",
            "status": "oom" if oom else "ok",
        }
        if not oom:
            row.update(
                time_ms=fn(n),
                peak_mem_bytes=fn(n) * 1e3,
                rel_err=0.1,
                tflops=0.5,
                matmul_tflops=2.0,
            )
        row.update(extra)
        out.append(complete_row(row))
    return out


@pytest.mark.parametrize(
    "dof, expected",
    [(1, 12.7062), (2, 4.3027), (5, 2.5706), (10, 2.2281), (30, 2.0423), (120, 1.9799)],
)
def test_t_quantile_matches_tables(dof: int, expected: float) -> None:
    assert scaling.t_quantile(0.975, dof) == pytest.approx(expected, abs=1e-4)


def test_t_quantile_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="p=0.3"):
        scaling.t_quantile(0.3, 5)
    with pytest.raises(ValueError, match="dof=0"):
        scaling.t_quantile(0.975, 0)


def test_fit_slope_ci_is_the_ols_t_interval() -> None:
    # independent: scipy's linregress standard error times the 97.5% t quantile (table value)
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(5)
    n = np.array(LENGTHS, dtype=float)
    y = n**1.3 * rng.lognormal(0, 0.2, len(n))
    slope, lo, hi = scaling.fit_slope(n, y)
    fit = stats.linregress(np.log(n), np.log(y))
    assert slope == pytest.approx(fit.slope)
    half = 2.7764 * fit.stderr  # t_{0.975, 4}
    assert lo == pytest.approx(fit.slope - half, rel=1e-4)
    assert hi == pytest.approx(fit.slope + half, rel=1e-4)


def test_fit_slope_exact_power_law_has_tight_ci() -> None:
    n = np.array(LENGTHS, dtype=float)
    slope, lo, hi = scaling.fit_slope(n, 3e-6 * n**2)
    assert slope == pytest.approx(2.0, abs=1e-9)
    assert hi - lo < 1e-6 and lo <= slope <= hi


def test_fit_slope_ci_covers_noisy_slope_and_matches_ols() -> None:
    rng = np.random.default_rng(2)
    n = np.repeat(np.array(LENGTHS, dtype=float), 3)
    y = n**1.5 * rng.lognormal(0, 0.1, len(n))
    slope, lo, hi = scaling.fit_slope(n, y)
    assert lo < 1.5 < hi and 0 < hi - lo < 0.3
    ref = np.polyfit(np.log(n), np.log(y), 1)[0]
    assert slope == pytest.approx(ref)


def test_fit_slope_degenerate_inputs() -> None:
    assert all(math.isnan(v) for v in scaling.fit_slope([256], [1.0]))
    slope, lo, hi = scaling.fit_slope([256, 512], [1.0, 4.0])
    assert slope == pytest.approx(2.0) and math.isnan(lo) and math.isnan(hi)
    # zero memory (below the allocator's resolution) is dropped, not log(0)
    assert scaling.fit_slope([256, 512, 1024, 2048], [0, 2, 4, 8])[0] == pytest.approx(1.0)


def test_time_and_memory_slopes_per_series() -> None:
    df = pd.DataFrame(
        rows_for("full", lambda n: 1e-6 * n**2)
        + rows_for("local", lambda n: 1e-3 * n, params={"window": 64})
        + rows_for("local", lambda n: 2e-3 * n, params={"window": 128})
    )
    t = scaling.time_slopes(df).set_index("series")
    assert set(t.index) == {"full", "local(window=64)", "local(window=128)"}
    assert t.loc["full", "slope"] == pytest.approx(2.0)
    assert t.loc["local(window=64)", "slope"] == pytest.approx(1.0)
    assert (t["n_lengths"] == len(LENGTHS)).all()
    m = scaling.memory_slopes(df).set_index("series")
    assert m.loc["full", "slope"] == pytest.approx(2.0)


def test_series_labels_only_name_varying_params() -> None:
    df = pd.DataFrame(
        [
            complete_row({"variant": "sdpa", "params": {"backend": b, "x": 1}})
            for b in ("math", "flash")
        ]
        + [complete_row({"variant": "performer", "params": {"nb_features": 8}})]
    )
    assert list(series.series_labels(df)) == [
        "sdpa(backend=math)",
        "sdpa(backend=flash)",
        "performer",
    ]


def test_series_labels_read_mappings_only() -> None:
    # read_rows is the one place that parses params text; labels never re-parse it
    df = pd.DataFrame([complete_row({"variant": "performer", "params": '{"nb_features": 8}'})])
    with pytest.raises(TypeError, match="read_rows"):
        series.series_labels(df)


def test_shape_params_do_not_split_a_series() -> None:
    # Variants are built for the point's kv_len/head_dim, so those sit in every row's params
    # (older rows say seq_len): a sweep over length is still one series per configuration.
    rows = []
    for n in (256, 512, 1024):
        for k in (64, 128):
            length = "seq_len" if n == 256 else "kv_len"
            params = {length: n, "head_dim": 64, "k": k, "share_kv": False}
            rows += rows_for("linformer", lambda m: m, lengths=[n], params=params)
    df = series.prepare(pd.DataFrame(rows))
    assert sorted(df["series"].unique()) == ["linformer(k=128)", "linformer(k=64)"]
    slopes = scaling.time_slopes(df)
    assert len(slopes) == 2 and np.allclose(slopes["slope"], 1.0)


def test_crossover_of_crossing_lines_is_known() -> None:
    # full: n^2 / 1024; linear: 4 n -> equal where n = 4096, so the crossover is 4096
    df = pd.DataFrame(
        rows_for("full", lambda n: n**2 / 1024, lengths=[1024, 2048, 8192, 16384])
        + rows_for("linear", lambda n: 4 * n, lengths=[1024, 2048, 8192, 16384])
    )
    assert scaling.crossover(df, "linear", "full") == pytest.approx(4096)
    assert scaling.crossover(df, "linear", "full", metric="peak_mem_bytes") == pytest.approx(4096)
    assert scaling.crossover(df, "full", "linear") is None  # never faster at the end


def test_crossover_edges() -> None:
    faster = pd.DataFrame(rows_for("full", lambda n: 10.0) + rows_for("a", lambda n: 1.0))
    assert scaling.crossover(faster, "a", "full") == 256  # faster from the start
    # faster, then slower again: does not "stay faster"
    wobble = pd.DataFrame(
        rows_for("full", lambda n: 10.0) + rows_for("a", lambda n: 1.0 if n < 4096 else 100.0)
    )
    assert scaling.crossover(wobble, "a", "full") is None
    # baseline out of memory from 4096 on counts as slower there: crossover at 4096
    oom = pd.DataFrame(
        rows_for("full", lambda n: 1.0, oom_from=4096) + rows_for("a", lambda n: 10.0)
    )
    assert scaling.crossover(oom, "a", "full") == 4096
    two = pd.DataFrame(rows_for("a", lambda n: 1.0) + rows_for("a", lambda n: 1.0, host="h2"))
    with pytest.raises(ValueError, match="contexts"):
        scaling.crossover(two, "a", "a")


def test_crossover_baseline_with_several_series_takes_the_best() -> None:
    df = pd.DataFrame(
        rows_for("sdpa", lambda n: n**2 / 1024, LONG, params={"backend": "math"})
        + rows_for("sdpa", lambda n: n**2 / 2048, LONG, params={"backend": "flash"})
        + rows_for("linear", lambda n: 4 * n, LONG)
    )
    # vs the faster backend (n^2/2048 = 4n at n = 8192)
    assert scaling.crossover(df, "linear", "sdpa") == pytest.approx(8192)
    assert scaling.crossover(df, "linear", "sdpa(backend=math)") == pytest.approx(4096)


def test_max_kv_len_before_oom() -> None:
    df = pd.DataFrame(
        rows_for("full", lambda n: 1.0, oom_from=4096) + rows_for("linear", lambda n: 1.0)
    )
    out = scaling.max_kv_len_before_oom(df).set_index("series")
    assert out.loc["full", "max_ok_kv_len"] == 2048
    assert out.loc["full", "first_oom_kv_len"] == 4096
    assert out.loc["linear", "max_ok_kv_len"] == 8192
    assert math.isnan(out.loc["linear", "first_oom_kv_len"])


def test_summary_table_agrees_with_the_functions() -> None:
    df = pd.DataFrame(
        rows_for("full", lambda n: n**2 / 1024, LONG, oom_from=16384)
        + rows_for("sdpa", lambda n: n**2 / 2048, LONG)
        + rows_for("linear", lambda n: 4 * n, LONG)
    )
    table = scaling.summary_table(df).set_index("series")
    assert table.loc["linear", "time_cross_full"] == pytest.approx(4096)
    assert table.loc["linear", "time_cross_sdpa"] == pytest.approx(8192)
    assert math.isnan(table.loc["full", "time_cross_full"])
    assert table.loc["full", "time_slope"] == pytest.approx(2.0)
    assert table.loc["full", "max_ok_kv_len"] == 8192
    assert table.loc["linear", "reference_kv_len"] == 8192  # all three ran there
    assert table.loc["linear", "rate_frac"] == pytest.approx(0.25)
    assert table.loc["linear", "rel_err"] == pytest.approx(0.1)
    assert scaling.summary_table(df, reference_kv_len=4096).loc[0, "reference_kv_len"] == 4096
