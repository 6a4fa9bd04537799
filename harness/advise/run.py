"""Measuring advise's missing points with the app's own measurement, stored as a sweep stores them.

Each point goes through :func:`harness.app.main.measure_point` (its task's measurement, as one
``attnbench`` job runs it). Engine knobs come from the tuning cache (``attnbench-tune`` fills it
ahead) or their defaults: the tuner is suspended unless ``tune`` is asked for, because a search
at a long training shape can take minutes that no time limit can interrupt; rows say which
(``tuned``). Its rows are written atomically to
``<out>/advise/<time>/<variant overrides>/rows.jsonl`` with ``run_id``, ``experiment``
(``advise``) and ``point_id``, then the sweep folder gets its ``results.csv``: a second advise
finds them, and ``attnbench-report <that folder>`` draws them.

The time limit is checked between points: a point that has started finishes, and the points not
started by then are listed with the command that measures them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from harness.advise.plan import Planned
from harness.analysis.rows import ROWS_FILE, write_rows
from harness.app.callbacks import aggregate
from harness.app.main import hygiene, measure_point, progress_line
from variants import tuning

EXPERIMENT = "advise"


@dataclasses.dataclass
class Measured:
    """What one advise run measured: the rows, its folder, seconds, and points left out."""

    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    folder: Path | None = None
    seconds: float = 0.0
    left_out: list[Planned] = dataclasses.field(default_factory=list)


def job_name(plan: Planned) -> str:
    """The job folder's name: the overrides that choose its variant, comma-joined as Hydra's
    ``override_dirname`` joins them (the setting's are the same for every job of the run)."""
    return ",".join(plan.extra)


def measure_points(
    plans: list[Planned],
    out: Path,
    time_limit: float,
    log: Callable[[str], None],
    skip: Callable[[Planned, list[dict[str, Any]]], bool] | None = None,
    tune: bool = False,
) -> Measured:
    """Measure ``plans`` in order within ``time_limit`` seconds; store their rows.

    Args:
        plans: Composed points (:func:`harness.advise.plan.compose_points`).
        out: The results root: the sweep folder is ``out/advise/<time>``.
        time_limit: Seconds; no point starts after it.
        log: Where progress lines go (stderr in the command).
        skip: ``skip(plan, rows so far)``: True leaves the point out unmeasured (the fallback
            exact variant, once another exact backend ran).
        tune: Let the tasks that tune search the engine knobs (module docstring).
    """
    done = Measured()
    if not plans:
        return done
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    done.folder = out / EXPERIMENT / stamp
    start = time.perf_counter()
    bar = tqdm(total=len(plans), desc="advise", file=sys.stderr, leave=False,
               disable=not sys.stderr.isatty())  # fmt: skip
    for i, plan in enumerate(plans, 1):
        if skip is not None and skip(plan, done.rows):
            bar.update(1)
            continue
        if time.perf_counter() - start > time_limit:
            done.left_out.append(plan)
            bar.update(1)
            continue
        point = plan.point
        job = done.folder / job_name(plan)
        job.mkdir(parents=True, exist_ok=True)
        hygiene()
        with contextlib.nullcontext() if tune else tuning.suspended():
            rows = measure_point(point, job)
        pid = point.point_id()
        for row in rows:
            row.update(experiment=EXPERIMENT, point_id=pid, run_id=stamp)
        write_rows(job / ROWS_FILE, rows)
        done.rows.extend(rows)
        bar.update(1)
        spent = time.perf_counter() - start
        bar.clear()
        line = progress_line(f"{i}/{len(plans)}", point, rows)
        log(f"{line} [{spent:.0f} of {time_limit:.0f} s]")
        bar.refresh()
    bar.close()
    done.seconds = time.perf_counter() - start
    if done.rows:
        aggregate(done.folder)
    return done
