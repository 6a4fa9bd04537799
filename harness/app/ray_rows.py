"""Sweep jobs on Ray: what each job asks for, and its rows coming home to the sweep folder.

The Ray launcher (``hydra/launcher=attnbench_ray``, the plugin in
``hydra_plugins/attnbench_ray_launcher``) keeps the Ray calls; this module keeps what the
harness decides, so that it is the same with or without a cluster:

* :func:`plan_job` (driver): the job's device (``auto`` resolved for the cluster, not for the
  driver), its Ray resources and its ``point_id``. A timing job gets whole GPUs (never two timing
  jobs on one device); an accuracy-only or training job the preset's denser share. The CPUs it
  reserves are the torch threads it runs with (``measure.threads`` when set).
* :func:`pack_job` (worker): the rows and other files of a job that ran in a temporary folder on
  the worker, which is then deleted. :func:`write_home` (driver) writes them below the sweep root
  as a local run does: other files first, ``rows.jsonl`` last through
  :func:`harness.analysis.rows.write_rows` (atomic), so resume (by ``point_id``) never sees half a
  job.
* :func:`lost_rows`: the ``error`` rows of a job whose worker died (reason ``worker lost: ...``).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from harness.analysis.rows import COLUMNS, ROWS_FILE, load_row_file, write_rows
from harness.app.point import ConfigError, Point

#: Where a job's share of the cluster comes from: ``timing`` jobs and ``packed`` ones.
ROLES = ("timing", "packed")


@dataclasses.dataclass
class JobPlan:
    """What the driver decided for one job before sending it."""

    device: str  # the job's device, ``auto`` resolved for the cluster
    role: str  # "timing" or "packed"
    num_cpus: float  # CPUs reserved, also the job's torch threads (rounded up)
    num_gpus: float  # GPUs reserved: whole ones for timing jobs on a GPU
    resources: dict[str, float]  # custom Ray resources (a timing slot per node, ...)
    point: Point | None  # None when the config is invalid (the worker writes the error row)

    @property
    def threads(self) -> int:
        """The torch threads a job pinned to ``num_cpus`` CPUs runs with."""
        return max(1, int(-(-self.num_cpus // 1)))

    def ray_options(self) -> dict[str, Any]:
        """The resource part of the Ray task options."""
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.resources:
            opts["resources"] = dict(self.resources)
        return opts


def _number(field: str, value: Any, whole: bool = False) -> float:
    """A resource amount: a number > 0 (a whole one where ``whole``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0
    if ok and whole:
        ok = float(value).is_integer()
    if not ok:
        kind = "a whole number >= 1" if whole else "a number > 0"
        raise ValueError(f"hydra.launcher.{field}={value!r} must be {kind}")
    return float(value)


def check_shares(shares: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate the preset's ``timing`` and ``packed`` shares; returns them as plain dicts.

    A timing job's ``gpus`` must be whole: a fraction would let two timing jobs share a device.
    """
    out = {}
    for role in ROLES:
        share = dict(shares.get(role) or {})
        _number(f"{role}.cpus", share.get("cpus", 1))
        _number(f"{role}.gpus", share.get("gpus", 1), whole=role == "timing")
        resources = dict(share.get("resources") or {})
        for name, amount in resources.items():
            _number(f"{role}.resources.{name}", amount)
        out[role] = {**share, "resources": resources}
    return out


def plan_job(
    cfg: DictConfig, shares: dict[str, dict[str, Any]], use_gpus: bool, packed_tasks: list[str]
) -> JobPlan:
    """The device, resources and point of one job; sets ``cfg.device`` to the resolved device.

    Args:
        cfg: The job's composed config (changed in place: ``device: auto`` becomes ``cuda`` when
            the job gets a GPU, else ``cpu``, so driver and worker agree on its ``point_id``).
        shares: :func:`check_shares` of the preset.
        use_gpus: Whether jobs whose device is ``cuda`` or ``auto`` get GPUs.
        packed_tasks: Tasks packed like accuracy-only jobs (``train``).
    """
    device = str(cfg.get("device"))
    wants_gpu = device.startswith("cuda") or (device == "auto" and use_gpus)
    if device == "auto":
        device = "cuda" if wants_gpu else "cpu"
        with open_dict(cfg):
            cfg.device = device
    measure = cfg.get("measure") or {}
    timing = bool(measure.get("timing", True)) and cfg.get("task") not in packed_tasks
    share = shares["timing" if timing else "packed"]
    threads = measure.get("threads")
    cpus = threads if isinstance(threads, int) and threads > 0 else share.get("cpus", 1)
    try:
        point = Point.from_cfg(cfg)
    except ConfigError:
        point = None
    return JobPlan(
        device=device,
        role="timing" if timing else "packed",
        num_cpus=float(cpus),
        num_gpus=float(share.get("gpus", 1)) if wants_gpu and use_gpus else 0.0,
        resources=share["resources"],
        point=point,
    )


def pack_job(job_dir: Path) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """The rows of a finished job and its other files (path relative to ``job_dir``: bytes)."""
    rows = load_row_file(job_dir / ROWS_FILE) if (job_dir / ROWS_FILE).exists() else []
    files = {
        str(p.relative_to(job_dir)): p.read_bytes()
        for p in sorted(job_dir.rglob("*"))
        if p.is_file() and p.name != ROWS_FILE
    }
    return rows, files


def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_home(job_dir: Path, rows: list[dict[str, Any]], files: dict[str, bytes]) -> None:
    """Write a job's files, then its rows, below ``job_dir`` on the driver."""
    for rel, data in files.items():
        target = (job_dir / rel).resolve()
        if job_dir.resolve() not in target.parents:  # a worker names files inside its job only
            raise ValueError(f"job file {rel!r} is outside its job folder")
        _write_bytes(target, data)
    if rows:
        write_rows(job_dir / ROWS_FILE, rows)


def lost_rows(cfg: DictConfig, plan: JobPlan, run_id: str, reason: str) -> list[dict[str, Any]]:
    """The ``error`` rows of a job whose worker died: one per pass, reason ``worker lost``.

    The rows carry the point's own columns (its ``point_id`` too, so a rerun skips it like any
    other recorded failure); what only the worker knew (host, threads, versions) stays null.
    """
    base: dict[str, Any] = {"experiment": cfg.get("experiment_name"), "run_id": run_id}
    passes = list(cfg.get("passes") or ["fwd"])
    if plan.point is not None:
        point = plan.point.as_dict()
        base |= {k: v for k, v in point.items() if k in COLUMNS and k != "seeds"}
        base["point_id"] = plan.point.point_id()
        passes = plan.point.passes
    else:
        base |= {"variant": None, "device": plan.device}
    return [base | {"pass": p, "status": "error", "reason": reason} for p in passes]
