"""What a Ray worker runs for one sweep job: the job in a temporary folder, its files returned.

Kept apart from the launcher module so that Hydra's plugin scan (which skips ``_`` modules) does
not import it, and so that a worker imports only this and what the job needs.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, read_write


def run_job_away(
    sweep_config: DictConfig,
    hydra_context: HydraContext,
    task_function: TaskFunction,
    singleton_state: dict[Any, Any],
    threads: int,
    worker_dir: str | None,
    environ: dict[str, str],
) -> dict[str, Any]:
    """Run one job with its output in a temporary folder on this machine; return what it wrote.

    The job's sweep folder becomes ``<temporary>/<sweep folder's name>`` (the name is the rows'
    ``run_id``), so nothing is written where the driver's sweep folder is, and the temporary
    folder is deleted before returning: the rows reach the sweep root only through the driver.

    Returns:
        ``job_return`` (Hydra's ``JobReturn``), ``rows``, ``files`` (its other files, relative
        path: bytes), ``printed`` (its standard output: the driver prints it when the job comes
        home, in the order jobs finish, instead of through Ray's log forwarding at any time),
        ``host`` and ``job_s`` (seconds in the job itself; the rest of a job's time on Ray is
        queueing, worker start-up and transfer).
    """
    from hydra_plugins.hydra_ray_launcher._launcher_util import _run_job

    from harness.app.ray_rows import pack_job
    from harness.measure.env import set_threads

    start = time.perf_counter()
    os.environ.update(environ)
    set_threads(threads)  # the CPUs Ray reserved; measure.threads, when set, is the same number
    tmp = Path(tempfile.mkdtemp(prefix="attnbench-job-", dir=worker_dir))
    try:
        with read_write(sweep_config.hydra.sweep):
            sweep_config.hydra.sweep.dir = str(tmp / Path(str(sweep_config.hydra.sweep.dir)).name)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            ret = _run_job(hydra_context, sweep_config, task_function, singleton_state)
        rows, files = pack_job(Path(str(ret.hydra_cfg.hydra.runtime.output_dir)))
        ret.hydra_cfg = None  # it names the temporary folder; the driver's config is the record
        return {
            "job_return": ret,
            "rows": rows,
            "files": files,
            "printed": out.getvalue(),
            "host": socket.gethostname(),
            "job_s": time.perf_counter() - start,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
