"""The attnbench app end to end: one point, bad input, sweeps, resume, launchers, aggregation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import run_python

from harness.analysis.rows import read_rows

pytestmark = pytest.mark.slow

TINY = ["batch=1", "heads=2", "head_dim=16", "measure.min_run_time=0.01", "seeds=[0]"]


def attnbench(args: list[str], cwd: Path, timeout: int = 240, **kw) -> subprocess.CompletedProcess:
    args = ["-m", "harness.app.main", *args]
    env = {"HYDRA_FULL_ERROR": "0"}
    return run_python(args, cwd=cwd, env=env, timeout=timeout, one_thread=False, **kw)


def rows_below(folder: Path) -> pd.DataFrame:
    return read_rows([folder])


def sweep_args(sweep: Path, variants: str, lengths: str) -> list[str]:
    """A tiny forward-only multirun of ``variants`` x ``lengths`` into ``sweep``."""
    return ["-m", f"variant={variants}", f"seq_len={lengths}", "passes=[fwd]", *TINY,
            f"hydra.sweep.dir={sweep}", "experiment_name=t"]  # fmt: skip


def test_one_point_writes_rows(tmp_path: Path) -> None:
    res = attnbench(["variant=sdpa", "seq_len=64", *TINY], tmp_path)
    assert res.returncode == 0, res.stderr
    files = list((tmp_path / "results" / "adhoc").rglob("rows.jsonl"))
    assert len(files) == 1
    df = rows_below(tmp_path / "results")
    assert sorted(df["pass"]) == ["bwd", "fwd", "fwd_bwd"]
    assert set(df["status"]) == {"ok"}
    fwd = df[df["pass"] == "fwd"].iloc[0]
    assert fwd["variant"] == "sdpa" and fwd["q_len"] == 64 and fwd["rel_err"] < 1e-5
    assert fwd["point_id"] and fwd["torch"] and fwd["host"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["variant=nope"], "nope"),  # Hydra lists the available options
        (["bogus_key=1"], "bogus_key"),
        (["seq_len=-5"], "seq_len=-5 must be an integer >= 1"),
        (["head_dim=0"], "head_dim=0"),
        (["variant=sdpa", "variant.backend=fast"], "backend='fast' is not one of auto"),
        (["+experiment=nope"], "nope"),
    ],
)
def test_bad_input_one_line_nothing_written(tmp_path: Path, args: list[str], needle: str) -> None:
    res = attnbench(args, tmp_path)
    assert res.returncode != 0
    assert needle in res.stderr, res.stderr
    assert not list(tmp_path.rglob("rows.jsonl"))
    assert (
        not list((tmp_path / "results").rglob(".hydra"))
        if (tmp_path / "results").exists()
        else True
    )


def test_unsupported_single_point_says_why(tmp_path: Path) -> None:
    res = attnbench(["variant=xformers", "seq_len=32", *TINY], tmp_path)
    assert res.returncode != 0
    assert "unsupported" in res.stderr and "device cpu not supported" in res.stderr
    df = rows_below(tmp_path / "results")
    assert set(df["status"]) == {"unsupported"}  # the row is still on disk


def test_sweep_aggregates_and_resumes(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = sweep_args(sweep, "full,sdpa", "32,48")
    res = attnbench(args, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "[1/4]" in res.stdout and "[4/4]" in res.stdout
    csv = pd.read_csv(sweep / "results.csv")
    assert len(csv) == 4 and set(csv["status"]) == {"ok"}
    assert csv["point_id"].nunique() == 4
    # a rerun skips everything; force=true measures again; no duplicate rows either way
    res = attnbench(args, tmp_path)
    assert res.stdout.count("already measured") == 4
    res = attnbench([*args, "force=true"], tmp_path)
    assert "already measured" not in res.stdout
    assert len(pd.read_csv(sweep / "results.csv")) == 4


def test_killed_sweep_resumes_without_duplicates(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = sweep_args(sweep, "full,sdpa,linear", "32,48,64")
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.app.main", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline and len(list(sweep.rglob("rows.jsonl"))) < 3:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(sweep.rglob("rows.jsonl")))
    assert 3 <= done < 9, f"kill came too late ({done} points done)"
    res = attnbench(args, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("already measured") == done
    df = pd.read_csv(sweep / "results.csv")
    assert len(df) == 9 and df["point_id"].nunique() == 9


def test_sweep_with_every_point_failing_exits_nonzero(tmp_path: Path) -> None:
    res = attnbench(
        ["-m", "variant=xformers", "seq_len=32,48", *TINY, f"hydra.sweep.dir={tmp_path / 's'}"],
        tmp_path,
    )
    assert res.returncode != 0
    assert "no point of this sweep ran" in res.stderr
    assert "unsupported" in res.stderr


def test_sweep_records_bad_knob_as_error_row_and_goes_on(tmp_path: Path) -> None:
    res = attnbench(
        [
            "-m",
            "variant=linformer",
            "seq_len=64",
            "knob=16,128",
            "passes=[fwd]",
            *TINY,
            f"hydra.sweep.dir={tmp_path / 's'}",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    df = pd.read_csv(tmp_path / "s" / "results.csv")
    assert sorted(df["status"]) == ["error", "ok"]
    assert "k=128" in df[df["status"] == "error"]["reason"].iloc[0]


def test_sweep_rows_explain_themselves(tmp_path: Path) -> None:
    # Every row, the config-error row included, says what its variant is without variant code.
    sweep = tmp_path / "s"
    res = attnbench([*sweep_args(sweep, "sdpa,linformer", "64"), "knob=16,128"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("already measured") == 1  # sdpa has no knob: one point, not two
    rows = [
        json.loads(line) for p in sweep.rglob("rows.jsonl") for line in p.read_text().splitlines()
    ]
    by = {(r["variant"], r["status"]): r for r in rows}
    assert set(by) == {("sdpa", "ok"), ("linformer", "ok"), ("linformer", "error")}
    facts = ("exact", "randomized", "knob", "knob_value")
    assert [by["sdpa", "ok"][c] for c in facts] == [True, False, None, None]
    assert [by["linformer", "ok"][c] for c in facts] == [False, True, "k", 16]
    assert [by["linformer", "error"][c] for c in facts] == [False, True, "k", 128]
    assert by["linformer", "ok"]["params"]["k"] == 16  # a JSON object, not text
    assert "knob=128" in by["linformer", "error"]["params"]["overrides"]
    assert by["linformer", "error"]["q_len"] == 64 and by["linformer", "error"]["kv_len"] == 64
    csv = pd.read_csv(sweep / "results.csv")
    assert json.loads(csv.loc[csv["variant"] == "sdpa", "params"].iloc[0])["backend"] == "auto"
    back = rows_below(sweep)
    assert back.loc[back["status"] == "error", "params"].iloc[0]["overrides"]


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    res = attnbench(
        [
            "-m",
            "hydra/launcher=submitit_local",
            "variant=full,sdpa",
            "seq_len=32",
            "passes=[fwd]",
            *TINY,
            f"hydra.sweep.dir={sweep}",
            "hydra.launcher.timeout_min=5",
        ],
        tmp_path,
        timeout=400,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    df = pd.read_csv(sweep / "results.csv")
    assert sorted(df["variant"]) == ["full", "sdpa"] and set(df["status"]) == {"ok"}


@pytest.mark.parametrize(
    "args,quick",
    [
        ([], True),
        (["hydra.sweep.dir=/tmp/s"], True),  # resume a quick sweep by its folder
        (["-m", "hydra.sweep.dir=/tmp/s", "hydra/launcher=joblib"], True),
        (["hydra.sweep.dir=/tmp/s", "variant=sdpa"], False),  # names a point
        (["--help"], False),
        (["--cfg", "job", "hydra.run.dir=/tmp/r"], False),
    ],
)
def test_only_hydra_overrides_run_the_quick_sweep(args: list[str], quick: bool) -> None:
    from harness.app.main import default_args

    got = default_args(args)
    assert got == ([*args, "+experiment=quick"] if quick else args)


def test_sweep_dir_alone_runs_and_resumes_the_quick_sweep(tmp_path: Path) -> None:
    # Nothing but hydra.* overrides: the quick preset (its experiment name, heads, passes),
    # shrunk to one point through its own sweeper parameters.
    sweep = tmp_path / "quick"
    args = [f"hydra.sweep.dir={sweep}", "hydra.sweeper.params.variant=sdpa",
            "hydra.sweeper.params.seq_len=32", "hydra.sweeper.params.causal=false"]  # fmt: skip
    res = attnbench(args, tmp_path)
    assert res.returncode == 0, res.stderr
    df = pd.read_csv(sweep / "results.csv")
    assert list(df["experiment"]) == ["quick"] and list(df["pass"]) == ["fwd"]
    assert list(df["heads"]) == [4] and set(df["status"]) == {"ok"}
    res = attnbench(args, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("already measured") == 1


def test_rows_are_valid_json_lines(tmp_path: Path) -> None:
    res = attnbench(["variant=full", "seq_len=16", "passes=[fwd]", *TINY], tmp_path)
    assert res.returncode == 0, res.stderr
    path = next((tmp_path / "results").rglob("rows.jsonl"))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["status"] == "ok"
