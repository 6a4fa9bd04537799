"""The ``attnbench`` Hydra app: one job measures one point and writes its rows.

``attnbench`` with no arguments runs the ``quick`` experiment (a small multirun on this
machine's default device) and leaves results, plots and a report in
``results/quick/<timestamp>/``; so does ``attnbench hydra.sweep.dir=DIR`` (only ``hydra.*``
overrides), which resumes the quick sweep in ``DIR``. Any other invocation is plain Hydra:
``attnbench variant=sdpa seq_len=1024`` (one point), ``attnbench +experiment=scaling``,
``attnbench -m variant=full,sdpa seq_len=512,1024``.

A job resolves its config into a :class:`~harness.app.point.Point` (validated before any work:
a bad value is a one-line error naming the field; in single-run mode the run folder is removed
so nothing half-written is left, in a multirun it is a row with status ``error``), skips it when
the multirun folder already holds its rows (:mod:`harness.app.resume`; ``force=true`` measures
again), measures it with its task's measurement (:mod:`harness.tasks`) and writes the rows
atomically to ``<job dir>/rows.jsonl``. When a multirun ends,
:class:`harness.app.callbacks.SweepCallback` aggregates the rows into ``results.csv`` and runs
the report.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from harness import tasks
from harness.analysis.rows import ROWS_FILE, write_rows
from harness.app import callbacks
from harness.app.config import conf_dir, register_schema
from harness.app.plugin_configs import register_plugin_configs
from harness.app.point import ConfigError, Point, variant_class, variant_params
from harness.app.resume import already_measured, skip_line
from harness.measure.env import resolve_device
from harness.measure.factory import describe
from variants import tuning

#: The configs (conf/ at the top level, installed as the package harness.conf).
CONF_DIR = conf_dir()
# conf/config.yaml names the schema: it is in the ConfigStore before anything composes a config
# (the app, and tests composing with CONF_DIR).
register_schema()


def hygiene() -> None:
    """Reset state one point could leak into the next (shared-process launchers)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()


def progress_line(index: str, point: Point, rows: list[dict[str, Any]]) -> str:
    """One line per point: index, variant, shape, status and the headline figure."""
    grouped = f"/{point.kv_heads}" if point.kv_heads != point.heads else ""
    shape = (
        f"B{point.batch} H{point.heads}{grouped} q{point.q_len} kv{point.kv_len} "
        f"d{point.head_dim} {point.dtype}{' causal' if point.causal else ''}"
    )
    parts = []
    for row in rows:
        figure = ""
        if row.get("status") == "ok":
            if row.get("time_ms") is not None:
                figure = f" {row['time_ms']:.3g} ms"
            if row.get("rel_err") is not None:
                figure += f" rel_err {row['rel_err']:.2e}"
            if row.get("embed_cosine") is not None:
                figure += f" cos {row['embed_cosine']:.5f}"
            if row.get("final_eval") is not None:  # a trained model: accuracy or bits/char
                figure += f" {row.get('metric', 'eval')} {row['final_eval']:.4g}"
        else:
            figure = f" ({(row.get('reason') or '')[:80]})"
        parts.append(f"{row.get('pass', '?')} {row.get('status')}{figure}")
    return f"[{index}] {point.variant} {shape}: " + "; ".join(parts)


def config_error_row(cfg: DictConfig, overrides: list[str], exc: ConfigError) -> dict[str, Any]:
    """The row a sweep records for a point whose config is invalid (the sweep goes on).

    Its ``params`` are the job's overrides; its ``point_id`` is a hash of them.
    """
    try:
        cls = variant_class(cfg)
        name, facts = cls.name, describe(cls, variant_params(cfg, cls))
    except ConfigError:  # the variant itself is what is wrong: the row keeps the name given
        name, facts = str(HydraConfig.get().runtime.choices.get("variant")), describe(None, {})
    blob = json.dumps(sorted(overrides)).encode()
    return {
        "experiment": cfg.get("experiment_name"),
        "task": cfg.get("task"),
        "point_id": "cfg-" + hashlib.sha256(blob).hexdigest()[:12],
        "variant": name,
        **facts,
        "params": {"overrides": overrides},
        "pass": "fwd",
        "batch": cfg.get("batch"),
        "heads": cfg.get("heads"),
        "kv_heads": cfg.get("kv_heads") or cfg.get("heads"),
        "q_len": cfg.get("seq_len"),
        "kv_len": cfg.get("kv_len") or cfg.get("seq_len"),
        "head_dim": cfg.get("head_dim"),
        "dtype": cfg.get("dtype"),
        "device": resolve_device(str(cfg.get("device"))),
        "causal": cfg.get("causal"),
        "status": "error",
        "reason": f"config: {exc}",
    }


def measure_point(point: Point, out_dir: Path) -> list[dict[str, Any]]:
    """The rows of one valid point, from its task's measurement (:mod:`harness.tasks`)."""
    if point.inputs == "minilm":  # registers the real-model input generator (attnbench[real])
        import harness.minilm.capture  # noqa: F401
    task = tasks.get(point.task)
    if task.tunes:
        return task.measure_fn()(point, point.factory(), out_dir)
    with tuning.suspended():  # no tuning search inside a task's timed calls
        return task.measure_fn()(point, point.factory(), out_dir)


def run_point(cfg: DictConfig) -> list[dict[str, Any]]:
    """Measure the point of ``cfg`` and write its rows; returns the rows (empty if skipped)."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    out_dir = Path(hc.runtime.output_dir)
    total = os.environ.get("ATTNBENCH_SWEEP_TOTAL")
    num = hc.job.num + 1 if multirun else 1
    index = f"{num}/{total}" if multirun and total else str(num)
    try:
        point = Point.from_cfg(cfg)
    except ConfigError as exc:
        if not multirun:
            if not (out_dir / ROWS_FILE).exists():
                shutil.rmtree(out_dir, ignore_errors=True)  # nothing half-written
            print(f"attnbench: {exc}", file=sys.stderr)
            sys.exit(2)
        rows = [config_error_row(cfg, list(hc.overrides.task), exc)]
        line = f"[{index}] {rows[0]['variant']}: config error: {exc}"
    else:
        pid = point.point_id()
        if multirun and not cfg.force and already_measured(Path(hc.sweep.dir), pid):
            print(skip_line(index, point.variant, pid), flush=True)
            return []
        hygiene()
        rows = measure_point(point, out_dir)
        for row in rows:
            row.update(experiment=cfg.experiment_name, point_id=pid)
        line = progress_line(index, point, rows)
    run_id = Path(hc.sweep.dir if multirun else hc.run.dir).name
    for row in rows:
        row["run_id"] = run_id
    write_rows(out_dir / ROWS_FILE, rows)
    print(line, flush=True)
    return rows


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> int:
    """Hydra entry point: measure one point (one job of a sweep)."""
    rows = run_point(cfg)
    if HydraConfig.get().mode != RunMode.MULTIRUN and rows:
        if all(r.get("status") != "ok" for r in rows):
            reasons = sorted({f"{r.get('status')}: {r.get('reason')}" for r in rows})
            print("attnbench: no pass of this point ran: " + " | ".join(reasons), file=sys.stderr)
            sys.exit(2)
    return 0


def default_args(args: list[str]) -> list[str]:
    """The command line the app runs: ``args``, plus ``+experiment=quick`` when they name no
    point.

    No arguments, or nothing but ``hydra.*`` overrides (and ``-m``/``--multirun``), is the
    quick sweep: ``attnbench hydra.sweep.dir=DIR`` runs, and so resumes, the quick sweep in
    ``DIR`` as plain ``attnbench`` does. Any other flag (``--help``, ``--cfg job``) is left to
    Hydra as given.
    """
    multirun = ("-m", "--multirun")
    overrides = [a for a in args if a not in multirun]
    if any(a.startswith("-") for a in overrides):
        return list(args)
    if all(a.startswith(("hydra.", "hydra/", "+hydra.", "++hydra.")) for a in overrides):
        return [*args, "+experiment=quick"]
    return list(args)


def cli() -> None:
    """Console script ``attnbench``: no arguments (or only ``hydra.*`` ones) runs the quick
    experiment (:func:`default_args`)."""
    sys.argv[1:] = default_args(sys.argv[1:])
    register_schema()  # the typed config, with the blocks of every registered task
    register_plugin_configs()  # installed plugins get a variant config: variant=NAME, no YAML
    main()
    if callbacks.LAST_SWEEP is not None and callbacks.LAST_SWEEP.get("failed_all"):
        sys.exit(3)


if __name__ == "__main__":
    cli()
