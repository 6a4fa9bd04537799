"""``attnbench-tune``: choose the engine knobs ahead of a sweep, on this machine, and cache them.

``attnbench-tune +experiment=scaling [OVERRIDES]`` expands the preset's sweep (its
``hydra.sweeper.params`` and any ``key=a,b`` override) and tunes every attention point of the
grid as the sweep will run it (:meth:`variants.base.AttentionVariant.tune`: the point's shape,
dtype, device, threads and inputs; forward+backward where its passes have one and the CPU
memory budget allows). ``attnbench-tune --variant linear --seq-len 8192 --causal`` tunes one
shape; ``--retune`` times every knob again instead of reading the cache. Each line printed
names the point and the values chosen (measured now or read from the cache,
:mod:`variants.tuning`). Points the variant cannot run, or whose forward exceeds the memory
budget, are skipped with the reason.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections.abc import Iterator, Sequence

import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from harness.app.config import conf_dir, register_schema
from harness.app.plugin_configs import register_plugin_configs
from harness.app.point import ConfigError, Point
from harness.measure import budget, env
from harness.measure.inputs import make_inputs
from variants import tuning
from variants.tuning_cache import cache_path

PROG = "attnbench-tune"


def grid(overrides: Sequence[str]) -> Iterator[list[str]]:
    """The override lists of every point of the sweep that ``overrides`` compose."""
    parse = OverridesParser.create().parse_overrides
    fixed = [ov.input_line for ov in parse(list(overrides)) if not ov.is_sweep_override()]
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("config", overrides=fixed, return_hydra_config=True)
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.get("params") or {}).items()]
    by_key: dict[str, list[str]] = {}
    for ov in parse([*params, *overrides]):
        key = ov.get_key_element()
        if ov.is_sweep_override():
            by_key[key] = [f"{key}={value}" for value in ov.sweep_string_iterator()]
        else:
            by_key[key] = [ov.input_line]
    for combination in itertools.product(*by_key.values()):
        yield list(combination)


def tune_point(point: Point) -> str:
    """Tune one point's variant as its sweep will run it; one line saying what was chosen."""
    shape = (point.batch, point.heads, point.q_len, point.kv_len, point.head_dim)
    label = (
        f"{point.variant} B{point.batch} H{point.heads} q{point.q_len} kv{point.kv_len} "
        f"d{point.head_dim} {point.dtype}{' causal' if point.causal else ''}"
    )
    env.set_threads(point.measure.threads)
    variant = point.factory()(point.seed).to(point.device)
    dtype = getattr(torch, point.dtype)
    kv_heads = None if point.kv_heads in (None, point.heads) else point.kv_heads
    limit = point.measure.memory_budget_gb
    on_cpu = torch.device(point.device).type == "cpu" and limit is not None

    def fits(name: str) -> bool:
        need = budget.pass_model_bytes(
            variant, shape, point.causal, dtype.itemsize, name, kv_heads
        )
        return not on_cpu or need <= limit * 1e9

    if not fits("fwd"):
        return f"{label}: skipped (forward over the memory budget)"
    q, k, v = make_inputs(
        point.inputs, *shape, dtype, point.device, point.seed, kv_heads=kv_heads,
        **(point.inputs_params or {}),
    )  # fmt: skip
    reasons = variant.not_supported_reasons(q, k, v, point.causal)
    if reasons:
        return f"{label}: skipped ({'; '.join(reasons)})"
    backward = any(p != "fwd" for p in point.passes or ()) and fits("fwd_bwd")
    start, runs = time.perf_counter(), tuning.TUNER.runs
    chosen = variant.tune(q, k, v, point.causal, backward=backward)
    if not chosen:
        return f"{label}: no engine knobs"
    spent = time.perf_counter() - start
    how = f"tuned in {spent:.1f} s" if tuning.TUNER.runs > runs else "from the cache"
    values = ", ".join(
        f"{k}={v}{'' if chosen.get(f'{k}_tuned') else ' (not tuned)'}"
        for k, v in chosen.items()
        if not k.endswith("_tuned")
    )
    return f"{label}: {values} ({how})"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Choose the variants' engine knobs by measurement on this machine for a "
        "preset's points (Hydra overrides, e.g. +experiment=scaling) or one shape (--variant).",
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides naming the points")
    p.add_argument("--variant", help="one variant (with --seq-len etc.) instead of a preset")
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch threads (default: the config's)")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--retune", action="store_true", help="time again, ignoring the cache")
    return p


def _overrides(args: argparse.Namespace) -> list[str]:
    if not args.variant:
        return list(args.overrides)
    shape = [
        f"variant={args.variant}", f"seq_len={args.seq_len}", f"heads={args.heads}",
        f"head_dim={args.head_dim}", f"batch={args.batch}", f"dtype={args.dtype}",
        f"device={args.device}", f"causal={str(args.causal).lower()}", "passes=[fwd,fwd_bwd]",
    ]  # fmt: skip
    return [*shape, *args.overrides]


def cli(argv: Sequence[str] | None = None) -> int:
    """Console script ``attnbench-tune`` (module docstring)."""
    args = parser().parse_args(argv)
    if not tuning.enabled():
        print(f"{PROG}: tuning is off ({tuning.ENV_TUNING}); nothing to do", file=sys.stderr)
        return 1
    register_schema()
    register_plugin_configs()
    overrides = _overrides(args)
    if args.threads:
        overrides.append(f"measure.threads={args.threads}")
    tuning.TUNER.fresh = args.retune
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{PROG}: cache {cache_path()}; load average {load:.1f} (tune on an idle machine)")
    failed = 0
    for point_overrides in grid(overrides):
        try:
            with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
                cfg = compose("config", overrides=point_overrides)
            point = Point.from_cfg(cfg)
        except ConfigError as exc:
            print(f"{' '.join(point_overrides)}: config error: {exc}")
            failed += 1
            continue
        if point.task != "attention":
            print(f"{point.variant}: task {point.task} skipped (attention points only)")
            continue
        try:
            print(tune_point(point), flush=True)
        except Exception as exc:  # one failing point never stops the others
            print(f"{point.variant} q{point.q_len}: error: {type(exc).__name__}: {exc}")
            failed += 1
    return 1 if failed else 0


def main() -> None:
    sys.exit(cli())
