"""``attnbench-speedcheck``: the speed table against sdpa, or the memory scaling, with targets.

``attnbench-speedcheck [--seq-len 8192 --heads 8 --head-dim 64 --batch 1 --device cpu
--dtype float32 --rounds 3 --targets FILE --out FILE.md]`` times the four passes of
self-attention (forward under ``no_grad`` and forward+backward, each bidirectional and causal)
of ``sdpa`` and the variants of the targets file (default ``conf/speedcheck.yaml``), and marks
each speed-up PASS or FAIL against its target. The variants' engine knobs are tuned on this
machine before they are timed (cached; ``--no-tune``: their defaults). ``--memory`` measures the
forward's peak memory against length instead. ``python -m harness.measure.speedcheck`` runs the
same command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from harness.measure.speedcheck.memory_scaling import memory_child, memory_report
from harness.measure.speedcheck.report import speed_report
from harness.measure.speedcheck.targets import TargetsError, default_path, load_targets
from variants import tuning

PROG = "attnbench-speedcheck"


def parser() -> argparse.ArgumentParser:
    """The command line's options."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="The efficient variants' speed-up over sdpa in every pass, against the "
        "targets of a config file; or, with --memory, their peak memory against length.",
    )
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"]
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per pass")
    p.add_argument(
        "--min-run-time", type=float, default=0.5, help="seconds per reading (at least 1 call)"
    )
    p.add_argument("--targets", metavar="FILE", help=f"targets file (default: {default_path()})")
    p.add_argument("--out", help="also write the markdown report to this file")
    p.add_argument("--memory", action="store_true", help="peak-memory scaling instead")
    p.add_argument(
        "--no-tune",
        action="store_true",
        help="engine knobs at their defaults (ATTNBENCH_TUNING=off; default: tuned and cached)",
    )
    p.add_argument(
        "--memory-child", nargs=3, metavar=("NAME", "PARAMS", "N"), help=argparse.SUPPRESS
    )
    return p


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    args = parser().parse_args(argv)
    if args.no_tune:
        os.environ[tuning.ENV_TUNING] = "off"
    if args.memory_child:
        name, params, n = args.memory_child
        print(memory_child(name, json.loads(params), int(n), args.heads, args.head_dim))
        return
    try:
        targets = load_targets(args.targets)
    except TargetsError as exc:
        sys.exit(f"{PROG}: {exc}")
    given = sys.argv[1:] if argv is None else argv
    command = " ".join([PROG, *given])
    if args.memory:
        if targets.memory is None:
            sys.exit(f"{PROG}: {targets.source}: memory: no memory targets for --memory")
        body = memory_report(targets.memory, args.heads, args.head_dim)
        text = f"`{command}`\n\n{body}\n"
    else:
        text = speed_report(args, targets, command)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
