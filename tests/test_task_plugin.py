"""A task from another package: one folder plus its registry entry, no file of the harness.

The toy package is written to a temporary folder with its entry point declared in a
``dist-info`` beside it (what ``pip install`` would leave), so the test installs nothing.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
from helpers import run_python

from harness.analysis.rows import read_rows

pytestmark = pytest.mark.slow

TOY = '''
"""A toy task: one row per point with a number made from its config block."""

import dataclasses

from harness.tasks import Task


@dataclasses.dataclass
class ToyConfig:
    scale: float = 2.0

    def __post_init__(self):
        if self.scale <= 0:
            from harness.measure.config import ConfigError

            raise ConfigError(f"toy.scale={self.scale!r} must be > 0")


def measure(point, factory, out_dir):
    import torch
    from variants import tuning

    variant = factory(point.seed)
    return [
        {
            "task": "toy",
            "variant": point.variant,
            "pass": "fwd",
            "status": "ok",
            "device": point.device,
            "dtype": point.dtype,
            "q_len": point.q_len,
            "kv_len": point.kv_len,
            "toy_value": point.task_cfg.scale * point.q_len,
            "toy_exact": bool(variant.exact),
            "toy_may_tune": tuning.can_tune(torch.zeros(1)),
        }
    ]


def section(ctx):
    total = float(ctx.rows["toy_value"].sum())
    return ["## Toy task", "", f"{len(ctx.rows)} toy rows, toy_value total {total:g}.", ""]


TASK = Task(name="toy", measure=measure, config=ToyConfig, report=section, columns=("toy_value",))
'''


def _toy_package(root: Path) -> Path:
    (root / "toy_task").mkdir(parents=True)
    (root / "toy_task" / "__init__.py").write_text(textwrap.dedent(TOY))
    info = root / "toy_task-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-task\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[attnbench.tasks]\ntoy = toy_task:TASK\n")
    return root


def _run(args: list[str], cwd: Path, site: Path) -> subprocess.CompletedProcess:
    env = {"ATTNBENCH_TUNING": "on"}  # the app, not the environment, must keep the tuner out
    return run_python(["-m", *args], paths=[site], cwd=cwd, timeout=300, env=env)


def test_a_plugin_task_runs_through_the_app_and_draws_its_section(tmp_path: Path) -> None:
    site = _toy_package(tmp_path / "site")
    sweep = tmp_path / "sweep"
    args = ["--multirun", "task=toy", "variant=sdpa,local", "seq_len=32", "toy.scale=3"]
    proc = _run(["harness.app.main", *args, f"hydra.sweep.dir={sweep}"], tmp_path, site)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows([sweep])
    assert sorted(rows["variant"]) == ["local", "sdpa"]
    assert set(rows["task"]) == {"toy"} and set(rows["status"]) == {"ok"}
    assert rows["toy_value"].eq(96.0).all()  # scale 3 x q_len 32, from the typed block
    assert rows["point_id"].nunique() == 2
    assert not rows["toy_may_tune"].any()  # a task that does not tune runs with the tuner off
    report = tmp_path / "report"
    proc = _run(["harness.report.build", str(sweep), "--out", str(report)], tmp_path, site)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (report / "report.md").read_text()
    assert "## Toy task" in text and "2 toy rows, toy_value total 192." in text


def test_a_plugin_tasks_config_is_typed_and_checked(tmp_path: Path) -> None:
    site = _toy_package(tmp_path / "site")
    proc = _run(["harness.app.main", "task=toy", "toy.scale=abc"], tmp_path, site)
    assert proc.returncode != 0 and "toy.scale" in proc.stderr
    proc = _run(["harness.app.main", "task=toy", "toy.scale=-1"], tmp_path, site)
    assert proc.returncode == 2 and "toy.scale=-1.0 must be > 0" in proc.stderr
    proc = _run(["harness.app.main", "task=toy", "--cfg", "job"], tmp_path, site)
    assert proc.returncode == 0 and "toy:\n  scale: 2.0" in proc.stdout
