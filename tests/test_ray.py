"""Sweeps on Ray (``hydra/launcher=attnbench_ray``): resources per job, rows coming home.

The plan and row tests need no Ray. The ``ray`` tests start a local cluster of 2 CPUs in this
process (once for the module) and run the app against it in subprocesses, as on a real cluster
whose driver is another machine: a 6-point sweep (rows like the basic launcher's, a rerun adds
none, the worker's folder is gone), and a job whose process exits mid-run (an ``error`` row,
the other job finishes). They are skipped when the ``attnbench[ray]`` extra is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from harness.analysis.rows import COLUMNS, ROWS_FILE, load_row_file
from harness.app import ray_rows
from harness.app.main import CONF_DIR

pytestmark = pytest.mark.slow

HAVE_RAY = all(
    importlib.util.find_spec(m) is not None for m in ("ray", "hydra_plugins.hydra_ray_launcher")
)


def needs_ray(test):
    """Mark ``test`` ``ray`` and skip it without the attnbench[ray] extra."""
    return pytest.mark.ray(pytest.mark.skipif(not HAVE_RAY, reason="needs attnbench[ray]")(test))


TINY = ["batch=1", "heads=2", "head_dim=16", "measure.min_run_time=0.01", "seeds=[0]"]
SHARES = ray_rows.check_shares(
    {"timing": {"gpus": 1, "cpus": 2}, "packed": {"gpus": 0.25, "cpus": 1}}
)

#: A variant whose process exits in its forward pass: a job killed mid-run.
EXIT_VARIANT = """
import os
from variants.full import FullAttention

class ExitAttention(FullAttention):
    name = "exit"

    def forward(self, q, k, v, causal=False):
        os._exit(3)
"""


def job_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[*TINY, "seq_len=32", *overrides])


# ------------------------------------------------------------------ no Ray needed: the plan
def test_timing_job_gets_a_whole_gpu_accuracy_jobs_share_one() -> None:
    timing = ray_rows.plan_job(job_cfg(), SHARES, use_gpus=True, packed_tasks=["train"])
    assert (timing.role, timing.num_gpus, timing.device) == ("timing", 1.0, "cuda")
    accuracy = ray_rows.plan_job(
        job_cfg("measure.timing=false"), SHARES, use_gpus=True, packed_tasks=[]
    )
    assert (accuracy.role, accuracy.num_gpus, accuracy.num_cpus) == ("packed", 0.25, 1.0)
    assert timing.point.point_id() != accuracy.point.point_id()


def test_cpu_cluster_pins_threads_and_resolves_auto_for_the_cluster() -> None:
    cfg = job_cfg("device=auto")
    plan = ray_rows.plan_job(cfg, SHARES, use_gpus=False, packed_tasks=[])
    assert (plan.device, cfg.device, plan.num_gpus) == ("cpu", "cpu", 0.0)
    assert plan.threads == 2 and plan.ray_options() == {"num_cpus": 2.0, "num_gpus": 0.0}
    plan = ray_rows.plan_job(job_cfg("measure.threads=3"), SHARES, False, [])
    assert (plan.num_cpus, plan.threads) == (3.0, 3)
    bad = ray_rows.plan_job(job_cfg("seq_len=-1"), SHARES, False, [])
    assert bad.point is None  # the worker writes its config-error row


def test_shares_refuse_a_fraction_of_a_gpu_for_timing() -> None:
    with pytest.raises(ValueError, match=r"timing.gpus=0.5 must be a whole number"):
        ray_rows.check_shares({"timing": {"gpus": 0.5}, "packed": {}})
    with pytest.raises(ValueError, match=r"packed.cpus=0 must be a number > 0"):
        ray_rows.check_shares({"timing": {}, "packed": {"cpus": 0}})


def test_rows_come_home_atomically_and_stay_in_their_job(tmp_path: Path) -> None:
    away = tmp_path / "worker" / "job"
    (away / ".hydra").mkdir(parents=True)
    (away / ".hydra" / "config.yaml").write_text("a: 1\n")
    (away / ROWS_FILE).write_text(json.dumps({"point_id": "p1", "status": "ok"}) + "\n")
    rows, files = ray_rows.pack_job(away)
    home = tmp_path / "sweep" / "job"
    ray_rows.write_home(home, rows, files)
    assert (home / ".hydra" / "config.yaml").read_text() == "a: 1\n"
    assert load_row_file(home / ROWS_FILE)[0]["point_id"] == "p1"
    assert not [p for p in home.rglob("*") if p.name.endswith(".tmp")]
    with pytest.raises(ValueError, match="outside its job folder"):
        ray_rows.write_home(home, [], {"../elsewhere": b"x"})


def test_lost_worker_rows_name_the_point_and_the_reason() -> None:
    cfg = job_cfg("passes=[fwd,bwd]")
    plan = ray_rows.plan_job(cfg, SHARES, False, [])
    rows = ray_rows.lost_rows(cfg, plan, "run1", "worker lost: WorkerCrashedError: died")
    assert [r["pass"] for r in rows] == ["fwd", "bwd"]
    assert {r["point_id"] for r in rows} == {plan.point.point_id()}
    assert all(r["status"] == "error" and r["reason"].startswith("worker lost") for r in rows)
    assert set().union(*rows) <= set(COLUMNS) and rows[0]["variant"] == "sdpa"


WITHOUT_EXTRA = """
import sys, warnings
sys.modules["ray"] = sys.modules["hydra_plugins.hydra_ray_launcher"] = None  # not installed
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
with warnings.catch_warnings():
    warnings.simplefilter("error")  # Hydra warns about a plugin module that fails to import
    names = [c.__name__ for c in Plugins.instance().discover(Launcher)]
assert "AttnbenchRayLauncher" in names, names
from hydra_plugins.attnbench_ray_launcher.ray_launcher import AttnbenchRayLauncher
try:
    AttnbenchRayLauncher(ray={}, timing={}, packed={})._start()
except ImportError as exc:
    print(exc)
"""


def test_without_the_extra_the_plugin_loads_quietly_and_says_what_to_install() -> None:
    res = subprocess.run([sys.executable, "-c", WITHOUT_EXTRA], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "pip install 'attnbench[ray]'" in res.stdout


# ------------------------------------------------------------------ a local Ray cluster
@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs for the module; yields its address."""
    import ray

    ctx = ray.init(
        num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False
    )
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


def attnbench(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", HYDRA_FULL_ERROR="0")
    return subprocess.run(
        [sys.executable, "-m", "harness.app.main", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def on_ray(address: str, worker_dir: Path) -> list[str]:
    return [
        "hydra/launcher=attnbench_ray",
        f"hydra.launcher.ray.init.address={address}",
        f"hydra.launcher.worker_dir={worker_dir}",
    ]


def job_rows(sweep: Path) -> dict[str, list[dict]]:
    """Rows of each job folder below ``sweep``, by folder name."""
    return {p.parent.name: load_row_file(p) for p in sorted(sweep.rglob(ROWS_FILE))}


@needs_ray
def test_sweep_on_ray_matches_basic_launcher_and_resumes(cluster: str, tmp_path: Path) -> None:
    sweep, basic, worker = tmp_path / "ray", tmp_path / "basic", tmp_path / "worker"
    worker.mkdir()
    # accuracy and timing (memory left out: it adds time and nothing Ray-specific)
    grid = ["-m", "variant=full,sdpa,linear", "seq_len=32,48", "passes=[fwd]", *TINY,
            "measure.memory=false", "experiment_name=t"]  # fmt: skip
    res = attnbench([*grid, f"hydra.sweep.dir={sweep}", *on_ray(cluster, worker)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[6/6]" in res.stdout
    ray_jobs = job_rows(sweep)
    assert len(ray_jobs) == 6 and all(len(rows) == 1 for rows in ray_jobs.values())
    ray_rows_all = [r for rows in ray_jobs.values() for r in rows]
    assert {r["status"] for r in ray_rows_all} == {"ok"}
    assert {r["threads"] for r in ray_rows_all} == {1}  # pinned to the CPU the job reserved
    assert all(r["host"] and r["device"] == "cpu" and r["run_id"] == "ray" for r in ray_rows_all)
    assert (sweep / "results.csv").exists()
    # rows came home without a shared folder: the worker's job folders are gone
    assert list(worker.iterdir()) == []
    assert all((sweep / job / ".hydra" / "config.yaml").exists() for job in ray_jobs)
    # the same points on the basic launcher: the same job folders, columns and point ids
    res = attnbench([*grid, f"hydra.sweep.dir={basic}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    basic_jobs = job_rows(basic)
    assert sorted(basic_jobs) == sorted(ray_jobs)
    for job, rows in basic_jobs.items():
        assert list(rows[0]) == list(ray_jobs[job][0]), job
        assert rows[0]["point_id"] == ray_jobs[job][0]["point_id"]
    # a second run measures nothing and adds no rows
    res = attnbench([*grid, f"hydra.sweep.dir={sweep}", *on_ray(cluster, worker)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("already measured") == 6
    assert job_rows(sweep) == ray_jobs


@needs_ray
def test_job_whose_worker_dies_is_an_error_row(cluster: str, tmp_path: Path) -> None:
    (tmp_path / "exit_variant.py").write_text(EXIT_VARIANT)  # the driver's folder, on sys.path
    sweep, worker = tmp_path / "sweep", tmp_path / "worker"
    worker.mkdir()
    targets = "variants.full.FullAttention,exit_variant.ExitAttention"
    args = ["-m", "variant=full", f"variant._target_={targets}", "seq_len=32", "passes=[fwd]",
            *TINY,
            f"hydra.sweep.dir={sweep}", *on_ray(cluster, worker)]  # fmt: skip
    res = attnbench(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [r for rs in job_rows(sweep).values() for r in rs]
    by_variant = {r["variant"]: r for r in rows}
    assert sorted(by_variant) == ["exit", "full"]
    assert by_variant["full"]["status"] == "ok"
    lost = by_variant["exit"]
    assert lost["status"] == "error" and lost["reason"].startswith("worker lost"), lost
    assert lost["point_id"] and lost["q_len"] == 32
    assert len(list(worker.iterdir())) == 1  # only the killed job's folder: it had no finally
