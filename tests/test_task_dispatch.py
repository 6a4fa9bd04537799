"""The app runs every task end to end: a training point through ``attnbench`` lands as rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_python

from harness import tasks
from harness.analysis.rows import read_rows

pytestmark = pytest.mark.slow


def test_every_task_but_attention_has_its_config_block() -> None:
    blocks = {name for name, task in tasks.tasks().items() if task.config is not None}
    assert set(tasks.names()) == {"attention", *blocks}


def test_a_training_point_runs_through_the_app(tmp_path: Path) -> None:
    args = [
        "+experiment=train",
        "variant=sdpa,local",
        "knob=8",
        "train_setting=mqar_64",
        "train.lr=3e-3",
        "seed=0",
        "train.steps=6",
        "train.min_steps=0",
        "train.eval_every=3",
        "train.batch=8",
        "measure.threads=1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    proc = run_python(
        ["-m", "harness.app.main", *args], cwd=tmp_path, timeout=300, one_thread=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_rows([tmp_path / "sweep"])
    assert sorted(rows["variant"]) == ["local", "sdpa"]
    assert set(rows["task"]) == {"train"} and set(rows["status"]) == {"ok"}
    assert rows["steps_run"].eq(6).all()
    assert rows["final_eval"].between(0, 1).all()
    sdpa = rows[rows["variant"] == "sdpa"].iloc[0]
    assert bool(sdpa["exact"]) and not bool(rows[rows["variant"] == "local"].iloc[0]["exact"])
    assert "Quality after training" in (tmp_path / "sweep" / "report.md").read_text()
