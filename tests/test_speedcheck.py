"""The speed check: its targets file, the table builder, the report and the command.

No speed is asserted: the timer is replaced by a scripted one, so the tests check which times a
ratio divides, which target each cell is held to and how the table is laid out, on tiny shapes.
"""

import importlib.metadata
import itertools
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from harness.app.config import conf_dir
from harness.measure import env, speedcheck
from harness.measure.speedcheck import table as speed_table

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = {"seq_len": 256, "heads": 2, "head_dim": 8}  # linformer k=256 needs kv_len >= 256


@pytest.fixture
def no_probe(monkeypatch):
    """A fixed matmul rate and copy bandwidth instead of the probes (2048^3 GEMM, 256 MB copy)."""
    monkeypatch.setattr(env, "matmul_tflops", lambda device, dtype: 0.1)
    monkeypatch.setattr(env, "copy_bandwidth_gbs", lambda device: 12.5)


def scripted_timer():
    """A timer returning 10, 11, 12, ... ms, one per reading, in the order they were taken."""
    counter = itertools.count(10)
    return lambda fn: float(next(counter))


def shipped_labels() -> list[str]:
    return [entry.label for entry in speedcheck.load_targets().speed]


def test_table_covers_every_pass_and_variant(no_probe):
    table = speedcheck.measure_table(**SHAPE, rounds=2, timer=scripted_timer())
    assert list(table.passes) == [(p, c) for p, c, _ in speedcheck.PASSES]
    labels = shipped_labels()
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
    labels = " | ".join(shipped_labels())
    assert lines[header] == f"| pass | {labels} |"
    assert labels == "longformer w=256 | performer m=256 | linear | linformer k=256"
    rows = [line.split(" | ") for line in lines[header + 2 : header + 6]]
    assert [row[0] for row in rows] == [f"| {label}" for _, _, label in speedcheck.PASSES]
    assert rows[1][-1] == "- |" and rows[3][-1] == "- |"  # linformer is not causal
    assert "(>= 10x" in rows[0][1] and "(>= 4x" in rows[3][2]  # the issue's targets
    detail = [line for line in lines if line.startswith("| forward") and "sdpa" in line]
    assert len(detail) == 4  # one sdpa row per pass, each its own baseline
    assert text.count("GFLOP/s") >= 2 and "measured matmul rate 100.0 GFLOP/s" in text
    # the work ratio: linformer's forward does 8*k*n*d against sdpa's 4*n*n*d, i.e. n / (2k)
    (linformer,) = [line for line in lines if line.startswith("| forward, bidirectional | linf")]
    n, k = SHAPE["seq_len"], min(256, SHAPE["seq_len"])
    assert linformer.split(" | ")[5] == f"{n / (2 * k):.2f}x"


def test_command_line_writes_the_report(no_probe, monkeypatch, tmp_path):
    monkeypatch.setattr(speed_table, "median_timer", lambda device, seconds: scripted_timer())
    out = tmp_path / "speed.md"
    argv = ["--seq-len", "256", "--heads", "2", "--head-dim", "8", "--rounds", "1"]
    speedcheck.main([*argv, "--device", "cpu", "--dtype", "float32", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("`attnbench-speedcheck --seq-len 256")
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


# ----------------------------------------------------------------------------- targets
#: The shipped targets: (column label, pass, causal) -> minimum speed-up over sdpa.
SHIPPED = {
    ("longformer w=256", "fwd", False): 10.0,
    ("longformer w=256", "fwd", True): 8.0,
    ("longformer w=256", "fwd_bwd", False): 7.0,
    ("longformer w=256", "fwd_bwd", True): 6.0,
    ("performer m=256", "fwd", False): 8.0,
    ("performer m=256", "fwd", True): 4.0,
    ("performer m=256", "fwd_bwd", False): 8.0,
    ("performer m=256", "fwd_bwd", True): 4.0,
    ("linear", "fwd", True): 16.0,
    ("linformer k=256", "fwd", False): 16.0,
}


def test_shipped_targets_come_from_the_config_file(no_probe):
    targets = speedcheck.load_targets()
    assert (
        Path(targets.source) == Path(conf_dir()) / "speedcheck.yaml" == speedcheck.default_path()
    )
    found = {
        (entry.label, p, c): entry.target(p, c)
        for entry in targets.speed
        for p, c, _ in speedcheck.PASSES
        if entry.target(p, c) is not None
    }
    assert found == SHIPPED
    assert [(e.variant, e.params) for e in targets.speed] == [
        ("longformer", {"window": 256}),
        ("performer", {"nb_features": 256}),
        ("linear", {}),
        ("linformer", {"k": 256}),
    ]
    assert targets.memory.max_slope == 1.15 and targets.memory.lengths[0] == 1024
    # every measured cell is held to its own target, and sdpa to none
    table = speedcheck.measure_table(**SHAPE, rounds=1, timer=scripted_timer())
    for (p, c), cells in table.passes.items():
        assert table.sdpa[(p, c)].target is None
        for label, cell in cells.items():
            assert cell.target == SHIPPED.get((label.split(" (")[0], p, c))


def write(tmp_path, text: str) -> str:
    path = tmp_path / "targets.yaml"
    path.write_text(text)
    return str(path)


OTHER_TARGETS = """
speed:
  - label: lin
    variant: linear
    min_speedup:
      fwd: {bidirectional: 0.5, causal: 1000}
  - variant: performer
    params: {nb_features: 16}
"""


def test_another_targets_file_sets_the_columns_and_verdicts(no_probe, monkeypatch, tmp_path):
    monkeypatch.setattr(speed_table, "median_timer", lambda device, seconds: scripted_timer())
    out = tmp_path / "speed.md"
    argv = ["--seq-len", "64", "--heads", "2", "--head-dim", "8", "--rounds", "1"]
    speedcheck.main([*argv, "--targets", write(tmp_path, OTHER_TARGETS), "--out", str(out)])
    lines = out.read_text().splitlines()
    header = lines.index("| pass | lin | performer nb_features=16 |")  # a default label
    rows = [line.split(" | ") for line in lines[header + 2 : header + 6]]
    # sdpa reads 10 ms, then lin 11 and performer 12 (round 0): lin 0.91x
    assert rows[0][1] == "0.9x (>= 0.5x ok)" and rows[1][1].endswith("(>= 1000x **no**)")
    assert rows[2][1] == "0.9x" and rows[0][2] == "0.8x |"  # no target: no verdict
    detail = [line for line in lines if line.startswith("| forward, causal | lin |")]
    assert detail[0].endswith("| >= 1000x | FAIL |")


@pytest.mark.parametrize(
    "text, message",
    [
        ("speed: [{variant: linear, min_speedup: {fwd: {causl: 2}}}]",
         r"speed\[0\]\.min_speedup\.fwd\.causl: Key 'causl' not in 'Masking'"),
        ("speed: [{variant: linear}, {variant: linear, min_speedup: {fwd: {causal: fast}}}]",
         r"speed\[1\]\.min_speedup\.fwd\.causal: Value 'fast'"),
        ("speed: [{variant: linear, min_speedup: {fwd_bwd: {causal: 0}}}]",
         r"speed\[0\]\.min_speedup\.fwd_bwd\.causal: 0.0 is not > 0"),
        ("speed: [{variant: nope}]", r"speed\[0\]\.variant: unknown variant 'nope'"),
        ("speed: [{variant: linear, colour: red}]", r"speed\[0\]\.colour: Key 'colour'"),
        ("speed: []", "speed: lists no variant"),
        ("speed: [{variant: linear}, {variant: linear}]", "speed: labels must be distinct"),
        ("speed: [{variant: linear}]\nmemory: {lengths: [1024], max_slope: 1, variants: []}",
         r"memory\.lengths: \[1024\]: needs two distinct positive lengths"),
        ("speed: [{variant: linear}]\nmemory: {lengths: [1, 2], max_slope: 1, "
         "variants: [{variant: linear, k: 1}]}", r"memory\.variants\[0\]\.k: Key 'k'"),
    ],
)  # fmt: skip
def test_a_bad_targets_file_is_a_one_line_error_naming_the_field(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(speedcheck.TargetsError, match=f"^{path}: {message}") as caught:
        speedcheck.load_targets(path)
    assert "\n" not in str(caught.value)
    with pytest.raises(SystemExit) as stopped:
        speedcheck.main(["--targets", path])
    assert str(stopped.value) == f"attnbench-speedcheck: {caught.value}"


def test_a_missing_targets_file_is_named(tmp_path):
    with pytest.raises(SystemExit, match="targets file .*nothere.yaml not found"):
        speedcheck.main(["--targets", str(tmp_path / "nothere.yaml")])


def test_memory_verdicts_use_the_files_lengths_and_slope(monkeypatch):
    from harness.measure.speedcheck import memory_scaling

    targets = speedcheck.load_targets().memory
    targets.variants = targets.variants[:1]
    asked = []

    def peak(name, params, n, heads, head_dim):
        asked.append(n)
        return 1000 * n**exponent

    monkeypatch.setattr(memory_scaling, "_child_peak", peak)
    for exponent, verdict in ((1.0, "PASS"), (1.2, "FAIL")):
        text = memory_scaling.memory_report(targets, heads=2, head_dim=8)
        assert "target <= 1.15" in text and text.endswith(f"| {exponent:.3f} | {verdict} |")
    assert asked == targets.lengths * 2


# ----------------------------------------------------------------------------- command
def test_the_command_is_registered():
    scripts = importlib.metadata.entry_points(group="console_scripts")
    (entry,) = [e for e in scripts if e.name == "attnbench-speedcheck"]
    assert entry.value == "harness.measure.speedcheck.cli:main"
    assert entry.load() is speedcheck.main


@pytest.mark.slow
@pytest.mark.parametrize("how", ["command", "module"])
def test_the_command_and_the_module_both_run(how):
    script = Path(sys.executable).with_name("attnbench-speedcheck")
    if how == "command":
        cmd = [str(script if script.exists() else shutil.which("attnbench-speedcheck"))]
    else:
        cmd = [sys.executable, "-m", "harness.measure.speedcheck"]
    proc = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.startswith("usage: attnbench-speedcheck") and "--targets FILE" in proc.stdout
    )
