"""Hydra launcher that runs each attnbench sweep job as a Ray task; the rows come home.

Built on ``hydra-ray-launcher`` (a subclass of its ``RayLauncher``, with its ``ray.init`` /
``ray.remote`` config block, its ``start_ray`` and, on the worker, its ``_run_job``), with what a
benchmark sweep needs added:

* resources per job (:func:`harness.app.ray_rows.plan_job`): a timing job gets whole GPUs, an
  accuracy-only or training job the preset's ``packed`` share; the CPUs a job reserves are its
  torch threads;
* the worker runs the job in a temporary folder and returns its rows and files, which the driver
  writes below the sweep root (atomic, resumable by ``point_id``); no shared folder is needed;
* a point already in the sweep folder is skipped on the driver (never sent);
* a job whose worker dies (crash, out of memory, lost node) becomes ``error`` rows with reason
  ``worker lost: ...`` and the sweep goes on.

``ray`` and the harness are imported when the launcher launches, not when Hydra scans plugins,
so this module loads in any Hydra app, with or without the ``attnbench[ray]`` extra.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

try:  # the attnbench[ray] extra; without it Hydra still scans this module quietly
    from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher as _Base
except ImportError:
    _Base = Launcher

log = logging.getLogger(__name__)

MISSING_EXTRA = (
    "hydra/launcher=attnbench_ray needs Ray and hydra-ray-launcher: pip install 'attnbench[ray]'"
)


class AttnbenchRayLauncher(_Base):
    """Each job a Ray task with its own resources; its rows written home by the driver.

    Args:
        ray: ``init`` (arguments of ``ray.init``: ``address`` selects an existing cluster, null
            starts a local one) and ``remote`` (options of every task), as hydra-ray-launcher.
        timing: Share of a job that times (``measure.timing: true``): ``gpus`` (whole),
            ``cpus`` (its torch threads unless ``measure.threads`` is set), ``resources``.
        packed: Share of an accuracy-only or training job (``gpus`` may be a fraction).
        packed_tasks: Tasks packed like accuracy-only jobs even when they time.
        use_gpus: ``auto`` (GPUs for jobs on ``cuda``/``auto`` when the cluster has GPUs when
            the sweep starts), ``true`` (always: an autoscaler adds GPU nodes) or ``false``.
        max_retries: Ray retries of a job whose worker died before it is recorded as lost.
        worker_dir: Where a worker makes its temporary job folder (null: the system's).
    """

    def __init__(
        self,
        ray: DictConfig,
        timing: DictConfig,
        packed: DictConfig,
        packed_tasks: list[str] | None = None,
        use_gpus: str | bool = "auto",
        max_retries: int = 0,
        worker_dir: str | None = None,
    ) -> None:
        self.ray_cfg = ray
        self.shares = {"timing": timing, "packed": packed}
        self.packed_tasks = list(packed_tasks or [])
        if use_gpus not in ("auto", True, False):
            raise ValueError(f"hydra.launcher.use_gpus={use_gpus!r} must be auto, true or false")
        self.use_gpus = use_gpus
        self.max_retries = int(max_retries)
        self.worker_dir = worker_dir
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.config: DictConfig | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def _start(self) -> Any:
        """Import Ray, connect to the cluster (or start a local one); returns the module."""
        if _Base is Launcher:
            raise ImportError(MISSING_EXTRA)
        import ray
        from hydra_plugins.hydra_ray_launcher._launcher_util import start_ray

        init = _plain(self.ray_cfg.get("init"))
        # unset keys are left to Ray; ray.init refuses local-cluster sizes when connecting
        start_ray(OmegaConf.create({k: v for k, v in init.items() if v is not None}))
        return ray

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        """Send every job not yet measured; write each one's rows home as it finishes."""
        from harness.analysis.rows import point_ids
        from harness.app import ray_rows

        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        shares = ray_rows.check_shares({k: _plain(v) for k, v in self.shares.items()})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        ray = self._start()
        gpus = self.use_gpus
        if gpus == "auto":
            gpus = ray.cluster_resources().get("GPU", 0) > 0
        log.info(f"Ray launcher: {len(job_overrides)} jobs, sweep folder {sweep_dir}")
        measured = point_ids([sweep_dir])
        # A GPU job gets a fresh process: a reused one keeps the CUDA context of the GPU it had
        # before, whatever GPU Ray assigns now (ray-project/ray#29624), and two timing jobs
        # could then share a device. ``max_calls`` cannot be given to ``.options()``.
        run_job_away = _worker_function()
        remote = {False: ray.remote(run_job_away), True: ray.remote(max_calls=1)(run_job_away)}
        shared = [
            ray.put(self.hydra_context),
            ray.put(self.task_function),
            ray.put(Singleton.get_state()),
        ]
        environ = {k: v for k, v in os.environ.items() if k == "ATTNBENCH_SWEEP_TOTAL"}
        options = _plain(self.ray_cfg.get("remote"))
        returns: list[JobReturn | None] = [None] * len(job_overrides)
        pending: dict[Any, tuple[int, DictConfig, Any, Path, float]] = {}
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = f"ray_{idx}"
                cfg.hydra.job.num = idx
            job_dir = sweep_dir / _subdir(cfg)
            plan = ray_rows.plan_job(cfg, shares, bool(gpus), self.packed_tasks)
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))} ({_share(plan)})")
            pid = plan.point.point_id() if plan.point is not None else None
            if pid in measured and not cfg.get("force"):
                print(_skip_line(cfg, plan), flush=True)
                returns[i] = _job_return(cfg, overrides, job_dir, [])
                continue
            opts = {**options, **plan.ray_options(), "max_retries": self.max_retries}
            args = (plan.threads, self.worker_dir, environ)
            ref = remote[plan.num_gpus > 0].options(**opts).remote(cfg, *shared, *args)
            pending[ref] = (i, cfg, plan, job_dir, time.perf_counter())
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            i, cfg, plan, job_dir, sent = pending.pop(ref)
            returns[i], ran = self._bring_home(ray, ref, cfg, plan, job_dir, job_overrides[i])
            waited = time.perf_counter() - sent
            log.info(f"\t#{cfg.hydra.job.num} home {waited:.1f} s after it was sent ({ran})")
        return [r for r in returns if r is not None]

    def _bring_home(
        self, ray: Any, ref: Any, cfg: DictConfig, plan: Any, job_dir: Path, overrides: Any
    ) -> tuple[JobReturn, str]:
        """Write a finished job's files and rows below the sweep root (a lost job's error rows).

        Returns:
            The job's ``JobReturn`` and where and how long it ran (the rest of the time since
            it was sent is Ray's: queueing for resources, worker start-up, transfers).
        """
        from harness.app import ray_rows

        try:
            done = ray.get(ref)
        except ray.exceptions.RayError as exc:  # no result: the worker died, or the task raised
            run_id = Path(str(cfg.hydra.sweep.dir)).name
            rows = ray_rows.lost_rows(cfg, plan, run_id, _why(ray, exc))
            ray_rows.write_home(job_dir, rows, {})
            print(_lost_line(cfg, plan, rows), flush=True)
            return _job_return(cfg, overrides, job_dir, rows), "lost"
        ray_rows.write_home(job_dir, done["rows"], done["files"])
        print(done["printed"], end="", flush=True)
        done["job_return"].working_dir = str(job_dir)
        return done["job_return"], f"ran {done['job_s']:.1f} s on {done['host']}"


def _why(ray: Any, exc: Exception) -> str:
    """The reason of a job that returned nothing: ``worker lost`` or the task's own error."""
    if isinstance(exc, ray.exceptions.RayTaskError):  # raised outside the job's own code
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        what, name = "job failed on its worker", type(cause).__name__
    else:
        cause, what, name = exc, "worker lost", type(exc).__name__
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{what}: {name}: {first}"[:500]


def _plain(node: Any) -> dict[str, Any]:
    """A config node (or None) as a plain dict."""
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node or {})


def _worker_function() -> Any:
    """The function each Ray task runs (imported only when launching)."""
    from hydra_plugins.attnbench_ray_launcher._worker import run_job_away

    return run_job_away


def _subdir(cfg: DictConfig) -> str:
    """The job's folder below the sweep root, resolved as Hydra's ``run_job`` resolves it."""
    before = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)
    try:
        return str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
    finally:
        HydraConfig.instance().cfg = before


def _share(plan: Any) -> str:
    """What a job reserves, for the log: ``timing: 1 CPU, 1 GPU on cuda``."""
    gpus = f", {plan.num_gpus:g} GPU" if plan.num_gpus else ""
    return f"{plan.role}: {plan.num_cpus:g} CPU{gpus} on {plan.device}"


def _index(cfg: DictConfig) -> str:
    """The job's ``i/total`` as the app prints it."""
    total = os.environ.get("ATTNBENCH_SWEEP_TOTAL")
    num = cfg.hydra.job.num + 1
    return f"{num}/{total}" if total else str(num)


def _skip_line(cfg: DictConfig, plan: Any) -> str:
    """The app's line for a point already measured."""
    from harness.app.resume import skip_line

    return skip_line(_index(cfg), plan.point.variant, plan.point.point_id())


def _lost_line(cfg: DictConfig, plan: Any, rows: list[dict[str, Any]]) -> str:
    """The app's progress line for a lost job's error rows."""
    from harness.app.main import progress_line

    if plan.point is None:
        return f"[{_index(cfg)}] {rows[0]['reason']}"
    return progress_line(_index(cfg), plan.point, rows)


def _job_return(cfg: DictConfig, overrides: Any, job_dir: Path, rows: list[Any]) -> JobReturn:
    """A completed ``JobReturn`` for a job the driver settled itself (skipped or lost)."""
    task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    ret = JobReturn(
        overrides=list(overrides),
        cfg=task_cfg,
        working_dir=str(job_dir),
        task_name=str(cfg.hydra.job.name),
        status=JobStatus.COMPLETED,
    )
    ret.return_value = rows
    return ret
