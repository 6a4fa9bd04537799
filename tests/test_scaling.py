"""Scaling functions on synthetic rows whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.analysis import scaling, series
from harness.analysis.rows import complete_row
from harness.report import style

LENGTHS = [256, 512, 1024, 2048, 4096, 8192]
LONG = LENGTHS + [16384]  # so that 8192 is not the last length


def rows_for(
    variant: str, fn, lengths=LENGTHS, params=None, oom_from=None, status="oom", **extra
) -> list:
    """fwd rows with time_ms = peak_mem_bytes = fn(n); ``status`` (oom) from ``oom_from`` on."""
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
            "status": status if oom else "ok",
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
    # ... which says only that the crossover lies at or below 256
    assert scaling.crossover_point(faster, "a", "full") == (256, True)
    assert scaling.summary_table(faster).set_index("series").loc["a", "time_cross_full_at_start"]
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


def test_memory_limits_tell_oom_from_over_budget() -> None:
    budget = {"memory_budget_bytes": 16e9}
    df = pd.DataFrame(
        rows_for("full", lambda n: 1.0, oom_from=4096)
        + rows_for("sdpa", lambda n: 1.0, oom_from=2048, status="over_budget", **budget)
        + rows_for("linear", lambda n: 1.0)
    )
    out = scaling.memory_limits(df).set_index("series")
    assert out.loc["full", "max_ok_kv_len"] == 2048
    assert out.loc["full", "first_oom_kv_len"] == 4096 and out.loc["full", "limit"] == "oom"
    assert math.isnan(out.loc["full", "first_over_budget_kv_len"])
    assert out.loc["sdpa", "limit"] == "over_budget" and out.loc["sdpa", "max_ok_kv_len"] == 1024
    assert out.loc["sdpa", "first_over_budget_kv_len"] == 2048
    assert out.loc["sdpa", "memory_budget_bytes"] == 16e9
    assert math.isnan(out.loc["sdpa", "first_oom_kv_len"])
    assert out.loc["linear", "max_ok_kv_len"] == 8192 and out.loc["linear", "limit"] == ""
    assert math.isnan(out.loc["linear", "first_oom_kv_len"])


def test_over_budget_counts_as_slower_in_a_crossover() -> None:
    df = pd.DataFrame(
        rows_for("full", lambda n: 1.0, oom_from=4096, status="over_budget")
        + rows_for("a", lambda n: 10.0)
    )
    assert scaling.crossover_point(df, "a", "full") == (4096, False)


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


def test_summary_reads_the_uniform_baseline_and_says_what_each_slope_covers() -> None:
    df = pd.DataFrame(
        rows_for("linear", lambda n: 5 + n / 400, LONG, baseline_uniform_rel_err=0.9)
        + rows_for("full", lambda n: n**2 / 1024, LONG[:3])
    )
    table = scaling.summary_table(df).set_index("series")
    assert table.loc["linear", "uniform_rel_err"] == pytest.approx(0.9)
    assert math.isnan(table.loc["full", "uniform_rel_err"])  # absent in rows: NaN, no error
    linear = table.loc["linear"]
    assert linear["time_slope"] == pytest.approx(1.0, abs=1e-6)  # not 0.5: the constant is fitted
    assert (linear["time_range_low"], linear["time_range_high"]) == (256, 16384)
    assert linear["time_method"] == "a+b*n^p" and not linear["time_curved"]
    full = table.loc["full"]  # three lengths: a slope, no interval
    assert full["time_slope"] == pytest.approx(2.0) and math.isnan(full["time_ci_low"])
    assert full["time_note"] == "3 lengths: too few for an interval"


def test_a_flat_series_is_reported_as_no_growth() -> None:
    # an overhead-dominated series (time within 1% of 2 ms at every length) beside a growing one
    noise = np.random.default_rng(3).normal(1.0, 0.01, len(LONG))
    flat_ms = dict(zip(LONG, 2.0 * noise))
    df = pd.DataFrame(
        rows_for("sdpa", lambda n: flat_ms[n], LONG) + rows_for("linear", lambda n: 4 * n, LONG)
    )
    slopes = scaling.time_slopes(df).set_index("series")
    assert slopes.loc["sdpa", "flat"] and not slopes.loc["linear", "flat"]
    assert slopes.loc["sdpa", "slope"] == 0.0 and slopes.loc["linear", "slope"] == pytest.approx(1)
    table = scaling.summary_table(df).set_index("series")
    flat = table.loc["sdpa"]
    assert flat["time_flat"] and flat["time_slope"] == 0.0
    assert flat["time_ci_low"] <= 0.0 <= flat["time_ci_high"]
    fit = {k[5:]: v for k, v in flat.items() if k.startswith("time_")}
    text = style.slope_text(fit)
    interval = f"[{flat['time_ci_low']:.2f}, {flat['time_ci_high']:.2f}]"
    assert text == f"0.00 {interval} over 256–16384, no growth measured"
    assert style.slope_text(fit, with_range=False) == f"0.00 {interval}, no growth measured"
    linear = {k[5:]: v for k, v in table.loc["linear"].items() if k.startswith("time_")}
    assert style.slope_text(linear) == "1.00 [1.00, 1.00] over 256–16384"


def test_series_labels_say_untrained_and_name_eps_always() -> None:
    df = pd.DataFrame(
        [
            complete_row({"variant": "linformer", "params": {"k": 64}, "trained": False}),
            complete_row({"variant": "linformer", "params": {"k": 64}, "trained": True}),
            complete_row({"variant": "linformer", "params": {"k": 64}, "trained": "False"}),
            complete_row({"variant": "performer", "params": {"nb_features": 8, "eps": 0.0}}),
            complete_row({"variant": "performer", "params": {"nb_features": 16, "eps": 0.0}}),
            complete_row({"variant": "local", "params": {"window": 8}}),  # trained null
        ]
    )
    assert list(series.series_labels(df)) == [
        "linformer untrained",  # k does not vary: not named, but untrained is
        "linformer",
        "linformer untrained",  # CSV text
        "performer(eps=0, nb_features=8)",
        "performer(eps=0, nb_features=16)",
        "local",
    ]
    # the knob left out (error-vs-knob panels): the label still says eps and untrained
    ignore = {"performer": ["nb_features"], "linformer": ["k"]}
    assert list(series.series_labels(df, ignore))[::3] == [
        "linformer untrained",
        "performer(eps=0)",
    ]


def test_prepare_adds_the_optional_columns_older_rows_lack() -> None:
    old = pd.DataFrame([{"variant": "full", "params": {}, "status": "ok", "q_len": 256}])
    out = series.prepare(old)
    for col in series.OPTIONAL_NUMERIC:
        assert out[col].isna().all()
    assert out.loc[0, "series"] == "full" and out.loc[0, "kv_len"] == 256
