"""The speed check's table builder: every pass and variant, ratios from the same round.

No speed is asserted: the timer is replaced by a scripted one, so the tests check which times a
ratio divides and how the table is laid out, on tiny shapes.
"""

import itertools
import statistics

import pytest

from harness.measure import speedcheck

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = {"seq_len": 256, "heads": 2, "head_dim": 8}  # linformer k=256 needs kv_len >= 256


@pytest.fixture
def no_probe(monkeypatch):
    """A fixed matmul rate and copy bandwidth instead of the probes (2048^3 GEMM, 256 MB copy)."""
    monkeypatch.setattr(speedcheck.env, "matmul_tflops", lambda device, dtype: 0.1)
    monkeypatch.setattr(speedcheck.env, "copy_bandwidth_gbs", lambda device: 12.5)


def scripted_timer():
    """A timer returning 10, 11, 12, ... ms, one per reading, in the order they were taken."""
    counter = itertools.count(10)
    return lambda fn: float(next(counter))


def test_table_covers_every_pass_and_variant(no_probe):
    table = speedcheck.measure_table(**SHAPE, rounds=2, timer=scripted_timer())
    assert list(table.passes) == [(p, c) for p, c, _ in speedcheck.PASSES]
    labels = [label for label, _, _ in speedcheck.TABLE_VARIANTS]
    for key, cells in table.passes.items():
        assert [cell.label.split(" (")[0] for cell in cells.values()] == labels
        for cell in cells.values():
            causal_linformer = cell.name == "linformer" and key[1]
            assert (cell.note is not None) == causal_linformer, (key, cell.label, cell.note)
            assert len(cell.times) == (0 if causal_linformer else 2)
            assert causal_linformer or cell.flops > 0
    # forward+backward work is the forward's plus the backward's
    cell = table.passes[("fwd_bwd", False)]["linear"]
    module = speedcheck.build("linear", {}, 256, 8)
    shape = (1, 2, 256, 256, 8)
    assert cell.flops == module.flops(*shape, False) + module.backward_flops(*shape, False)


def test_ratios_divide_times_from_the_same_round(no_probe):
    table = speedcheck.measure_table(**SHAPE, rounds=3, timer=scripted_timer())
    for key, cells in table.passes.items():
        sdpa = table.sdpa[key]
        timed = [cell for cell in cells.values() if cell.times]
        for r in range(3):
            # each round: sdpa's reading first, then every variant's, in one block of readings
            readings = sorted([sdpa.times[r]] + [cell.times[r] for cell in timed])
            assert readings == [sdpa.times[r] + i for i in range(len(timed) + 1)]
            for cell in timed:
                assert cell.sdpa_times[r] == sdpa.times[r]
        for cell in timed:
            per_round = [s / t for s, t in zip(sdpa.times, cell.times)]
            assert cell.ratio == pytest.approx(statistics.median(per_round))
    # the variant order flips every other round (drift in load hits every variant alike)
    cells = list(table.passes[("fwd", False)].values())
    assert cells[0].times[0] < cells[-1].times[0] and cells[0].times[1] > cells[-1].times[1]


def test_markdown_lays_out_the_issue_table(no_probe):
    table = speedcheck.measure_table(**SHAPE, rounds=1, timer=scripted_timer())
    text = speedcheck.render_markdown(table, command="python -m harness.measure.speedcheck")
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| pass | longformer"))
    labels = " | ".join(label for label, _, _ in speedcheck.TABLE_VARIANTS)
    assert lines[header] == f"| pass | {labels} |"
    assert labels == "longformer w=256 | performer m=256 | linear | linformer k=256"
    rows = [line.split(" | ") for line in lines[header + 2 : header + 6]]
    assert [row[0] for row in rows] == [f"| {label}" for _, _, label in speedcheck.PASSES]
    assert rows[1][-1] == "- |" and rows[3][-1] == "- |"  # linformer is not causal
    assert "(>= 10x" in rows[0][1] and "(>= 4x" in rows[3][2]  # the issue's targets
    detail = [line for line in lines if line.startswith("| forward") and "sdpa" in line]
    assert len(detail) == 4  # one sdpa row per pass, each its own baseline
    assert text.count("GFLOP/s") >= 2 and "measured matmul rate 100.0 GFLOP/s" in text


def test_command_line_writes_the_report(no_probe, monkeypatch, tmp_path):
    monkeypatch.setattr(speedcheck, "median_timer", lambda device, seconds: scripted_timer())
    out = tmp_path / "speed.md"
    argv = ["--seq-len", "256", "--heads", "2", "--head-dim", "8", "--rounds", "1"]
    speedcheck.main([*argv, "--device", "cpu", "--dtype", "float32", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("`python -m harness.measure.speedcheck --seq-len 256")
    assert "load average" in text and "| forward+backward, causal |" in text
    assert "copy bandwidth 12.5 GB/s at the start, 12.5 at the end" in text


def test_copy_bandwidth_is_a_positive_rate():
    from harness.measure import env

    assert 0.1 < env.copy_bandwidth_gbs("cpu", megabytes=8) < 1e4  # GB/s, any sane machine


def test_a_run_cut_short_keeps_the_passes_it_finished(no_probe):
    # on_pass sees the table after every pass; the markdown of a partial table says so
    seen = []

    def on_pass(table):
        seen.append(speedcheck.render_markdown(table))

    speedcheck.measure_table(**SHAPE, rounds=1, timer=scripted_timer(), on_pass=on_pass)
    assert len(seen) == len(speedcheck.PASSES)
    assert "Partial: 1 of 4 passes" in seen[0] and "forward, causal" not in seen[0]
    first_row = speedcheck.PASSES[0][2]
    assert f"| {first_row} |" in seen[0]
    assert "Partial" not in seen[-1]
