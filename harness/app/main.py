"""The ``attnbench`` Hydra app: one job measures one point and writes its rows.

``attnbench`` with no arguments runs the ``quick`` experiment (a small multirun on this
machine's default device) and leaves results, plots and a report in
``results/quick/<timestamp>/``. Any other invocation is plain Hydra:
``attnbench variant=sdpa seq_len=1024`` (one point), ``attnbench +experiment=scaling``,
``attnbench -m variant=full,sdpa seq_len=512,1024``.

A job resolves its config into a *point* (the dict of docs/notes/CONTRACTS.md), validates it
before any work (a bad value is a one-line error naming the field; in single-run mode the run
folder is removed so nothing half-written is left), skips it when a multirun folder already
holds rows with the same ``point_id`` (resume; ``force=true`` measures again), measures it with
:func:`harness.measure.point.measure_point` (or the real-model task) and writes the rows atomically to
``<job dir>/rows.jsonl``. When a multirun ends, :class:`harness.app.callbacks.SweepCallback`
aggregates the rows into ``results.csv`` and runs the report.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from harness.analysis.rows import ROWS_FILE, iter_row_files, load_row_file, write_rows

log = logging.getLogger("attnbench")

#: The configs ship inside the package (harness/conf), so a non-editable install finds them.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
TASKS = ("attention", "realmodel")
DTYPES = ("float16", "bfloat16", "float32", "float64")
DEVICES = ("auto", "cpu", "cuda")
PASSES = ("fwd", "bwd", "fwd_bwd")
#: Keys of the config that describe the point (everything else is bookkeeping).
POINT_KEYS = (
    "task",
    "variant",
    "batch",
    "heads",
    "seq_len",
    "kv_len",
    "head_dim",
    "dtype",
    "device",
    "causal",
    "inputs",
    "seed",
    "seeds",
    "passes",
    "knob",
    "measure",
    "realmodel",
)


class ConfigError(ValueError):
    """A config value outside its allowed range (the message names the field)."""


# ------------------------------------------------------------------------------ the point
def _positive(cfg: DictConfig, field: str) -> int:
    value = cfg.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{field}={value!r} must be an integer >= 1")
    return value


def _choice(value: Any, field: str, allowed: tuple[str, ...]) -> Any:
    if value not in allowed:
        raise ConfigError(f"{field}={value!r} is not one of {', '.join(allowed)}")
    return value


def variant_class(cfg: DictConfig):
    """The class named by ``cfg.variant._target_``, checked to be an AttentionVariant."""
    from hydra.utils import get_class

    from variants.base import AttentionVariant

    target = cfg.variant.get("_target_") if isinstance(cfg.get("variant"), DictConfig) else None
    if not target:
        raise ConfigError("variant must be a config group choice with a _target_ (variant=NAME)")
    try:
        cls = get_class(target)
    except Exception as exc:  # noqa: BLE001 - report the import failure in one line
        raise ConfigError(f"variant._target_={target!r} cannot be imported: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, AttentionVariant)):
        raise ConfigError(f"variant._target_={target!r} is not an AttentionVariant")
    return cls


def variant_params(cfg: DictConfig) -> dict[str, Any]:
    """The variant's own parameters from the config (without ``_target_``), knob applied."""
    params = {
        k: v
        for k, v in OmegaConf.to_container(cfg.variant, resolve=True).items()
        if not k.startswith("_")
    }
    knob_value = cfg.get("knob")
    if knob_value is not None:
        knob = variant_class(cfg).knob
        if knob is not None:
            params[knob] = knob_value
    return params


def resolve_point(cfg: DictConfig) -> dict[str, Any]:
    """Validate the config and turn it into a measurement point (raises ConfigError)."""
    task = _choice(cfg.get("task", "attention"), "task", TASKS)
    for field in ("batch", "heads", "seq_len", "head_dim"):
        _positive(cfg, field)
    kv_len = cfg.get("kv_len")
    if kv_len is not None:
        _positive(cfg, "kv_len")
    else:
        kv_len = cfg.seq_len
    dtype = _choice(cfg.dtype, "dtype", DTYPES)
    device = _choice(cfg.device, "device", DEVICES)
    passes = list(cfg.passes)
    for p in passes:
        _choice(p, "passes", PASSES)
    if not passes:
        raise ConfigError(f"passes is empty; choose from {', '.join(PASSES)}")
    if not isinstance(cfg.causal, bool):
        raise ConfigError(f"causal={cfg.causal!r} must be true or false")
    seeds = list(cfg.get("seeds") or [cfg.seed])
    cls = variant_class(cfg)
    measure = OmegaConf.to_container(cfg.measure, resolve=True)
    inputs_cfg = OmegaConf.to_container(cfg.inputs, resolve=True)
    inputs_name = inputs_cfg.pop("name", None)
    if not inputs_name:
        raise ConfigError("inputs must be a config group choice with a name (inputs=gaussian)")
    point = {
        "task": task,
        "variant": cls.name,
        "params": variant_params(cfg),
        "batch": cfg.batch,
        "heads": cfg.heads,
        "q_len": cfg.seq_len,
        "kv_len": kv_len,
        "head_dim": cfg.head_dim,
        "dtype": dtype,
        "device": device,
        "causal": cfg.causal,
        "inputs": inputs_name,
        "inputs_params": inputs_cfg,
        "seed": cfg.seed,
        "seeds": seeds if cls.randomized else [cfg.seed],
        "passes": passes,
        "measure": measure,
    }
    if task == "realmodel":
        point["realmodel"] = OmegaConf.to_container(cfg.get("realmodel") or {}, resolve=True)
        point["knob"] = cls.knob
        point["knob_value"] = point["params"].get(cls.knob) if cls.knob else None
    return point


def point_id(point: dict[str, Any]) -> str:
    """Stable hash of the resolved point (device as configured, so resume works anywhere)."""
    keyed = {k: v for k, v in point.items() if k not in ("run_id", "experiment")}
    keyed["measure"] = {k: v for k, v in point["measure"].items() if k != "threads"} | {
        "threads": point["measure"].get("threads")
    }
    blob = json.dumps(keyed, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_factory(cfg: DictConfig, point: dict[str, Any]):
    """``factory(seed) -> AttentionVariant`` building the configured variant for the point."""
    import inspect

    from hydra.utils import instantiate

    cls = variant_class(cfg)
    accepts_seed = "seed" in inspect.signature(cls.__init__).parameters
    knob_override = {}
    if cfg.get("knob") is not None and cls.knob is not None:
        knob_override[cls.knob] = cfg.knob

    def factory(seed: int):
        extra: dict[str, Any] = {"seq_len": point["kv_len"], "head_dim": point["head_dim"]}
        if accepts_seed:
            extra["seed"] = seed
        return instantiate(cfg.variant, **extra, **knob_override)

    return factory


def build_check(factory, point: dict[str, Any]) -> None:
    """Build the variant once so that bad parameters fail before any measurement."""
    from variants.base import VariantConfigError

    try:
        factory(point["seed"])
    except VariantConfigError as exc:
        raise ConfigError(str(exc)) from exc
    except TypeError as exc:  # unknown parameter reaching the constructor
        raise ConfigError(f"variant: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - instantiate wraps constructor errors
        cause = exc.__cause__ or exc
        if isinstance(cause, VariantConfigError | TypeError):
            raise ConfigError(str(cause)) from exc
        raise


# ------------------------------------------------------------------------------ resume
def existing_point_ids(sweep_dir: Path, exclude: Path | None = None) -> set[str]:
    """point_ids that already have rows somewhere below ``sweep_dir``."""
    ids: set[str] = set()
    for path in iter_row_files([sweep_dir]):
        if exclude is not None and path.parent == exclude:
            continue
        try:
            ids.update(r.get("point_id") for r in load_row_file(path))
        except (ValueError, OSError):
            continue
    return ids


def hygiene() -> None:
    """Reset state one point could leak into the next (shared-process launchers)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()


# ------------------------------------------------------------------------------ progress
def progress_line(index: str, point: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """One line per point: index, variant, shape, status and the headline figure."""
    shape = (
        f"B{point['batch']} H{point['heads']} q{point['q_len']} kv{point['kv_len']} "
        f"d{point['head_dim']} {point['dtype']}{' causal' if point['causal'] else ''}"
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
        else:
            figure = f" ({(row.get('reason') or '')[:80]})"
        parts.append(f"{row.get('pass', '?')} {row.get('status')}{figure}")
    return f"[{index}] {point['variant']} {shape}: " + "; ".join(parts)


# ------------------------------------------------------------------------------ the job
def _config_error_row(cfg: DictConfig, hc, out_dir: Path, exc: Exception) -> list[dict]:
    """The row a sweep records for a point whose config is invalid."""
    from variants import get_class

    overrides = list(hc.overrides.task)
    name = None
    try:
        name = variant_class(cfg).name
    except ConfigError:
        name = str(hc.runtime.choices.get("variant"))
    try:
        get_class(name)
    except Exception:  # noqa: BLE001 - the row still records the name given
        pass
    blob = json.dumps(sorted(overrides)).encode()
    row = {
        "run_id": Path(hc.sweep.dir).name,
        "experiment": cfg.get("experiment_name"),
        "point_id": "cfg-" + hashlib.sha256(blob).hexdigest()[:12],
        "variant": name,
        "params": json.dumps(overrides),
        "pass": "fwd",
        "batch": cfg.get("batch"),
        "heads": cfg.get("heads"),
        "q_len": cfg.get("seq_len"),
        "kv_len": cfg.get("kv_len") or cfg.get("seq_len"),
        "head_dim": cfg.get("head_dim"),
        "dtype": cfg.get("dtype"),
        "causal": cfg.get("causal"),
        "status": "error",
        "reason": f"config: {exc}",
    }
    write_rows(out_dir / ROWS_FILE, [row])
    print(f"[{hc.job.num + 1}] {name}: config error: {exc}", flush=True)
    return [row]


def run_point(cfg: DictConfig) -> list[dict[str, Any]]:
    """Measure the point of ``cfg`` and write its rows; returns the rows (empty if skipped)."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    out_dir = Path(hc.runtime.output_dir)
    try:
        point = resolve_point(cfg)
        factory = make_factory(cfg, point)
        build_check(factory, point)
    except ConfigError as exc:
        if multirun:  # one bad point of a sweep (e.g. k > seq_len) is a row; the sweep goes on
            return _config_error_row(cfg, hc, out_dir, exc)
        if not (out_dir / ROWS_FILE).exists():
            shutil.rmtree(out_dir, ignore_errors=True)  # nothing half-written
        print(f"attnbench: {exc}", file=sys.stderr)
        sys.exit(2)
    from harness.measure.env import resolve_device

    point["device"] = resolve_device(point["device"])
    point["experiment"] = cfg.experiment_name
    point["run_id"] = Path(hc.sweep.dir if multirun else hc.run.dir).name
    pid = point_id(point)
    total = os.environ.get("ATTNBENCH_SWEEP_TOTAL")
    num = hc.job.num + 1 if multirun else 1
    index = f"{num}/{total}" if multirun and total else str(num)

    if multirun and not cfg.force:
        if pid in existing_point_ids(Path(hc.sweep.dir)):
            print(
                f"[{index}] {point['variant']} point {pid} already measured; skipped "
                "(force=true to measure again)",
                flush=True,
            )
            return []
    hygiene()
    if point["task"] == "realmodel":
        from harness.realmodel.experiment import measure_realmodel_point as measure
    else:
        from harness.measure.point import measure_point as measure
    rows = measure(point, factory)
    for row in rows:
        row.update(run_id=point["run_id"], experiment=point["experiment"], point_id=pid)
    write_rows(out_dir / ROWS_FILE, rows)
    print(progress_line(index, point, rows), flush=True)
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


def _register_plugins() -> None:
    """Give installed plugins a ``variant`` config node so ``variant=NAME`` needs no YAML."""
    try:
        from harness.app.plugin_configs import register_plugin_configs
    except ImportError:
        return
    register_plugin_configs()


def cli() -> None:
    """Console script ``attnbench``: no arguments runs the quick experiment."""
    if len(sys.argv) == 1:
        sys.argv.append("+experiment=quick")
    _register_plugins()
    main()
    from harness.app import callbacks

    if callbacks.LAST_SWEEP is not None and callbacks.LAST_SWEEP.get("failed_all"):
        sys.exit(3)


if __name__ == "__main__":
    cli()
