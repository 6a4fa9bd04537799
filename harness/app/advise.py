"""``attnbench-advise``: which attention for one setting on this machine, and what it gives up.

``attnbench`` itself is the Hydra app (every argument is an override of one point), so the
advice is its own console script::

    attnbench-advise --seq-len 4096 --heads 8 --head-dim 64 --causal --mode prefill
    attnbench-advise --seq-len 2048 --heads 8 --kv-heads 2 --head-dim 64 --mode decode \\
        --max-memory 64MiB --json results/ other_results/

It prints the recommendation in its first line, then the ranked table with each arm's evidence
and the command that reproduces it (``--json``: the same as one JSON object). Missing points are
measured first (a time limit printed beforehand, progress on stderr) and stored under
``results/advise/``. A bad value, a device this machine lacks, or a setting no variant can run
is one line on stderr and exit code 2. docs/advise.md has the decision rule.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from harness.advise.answer import TIME_LIMIT, advise
from harness.advise.render import text
from harness.advise.setting import MODES, Setting, parse_memory
from harness.app.config import register_schema
from harness.app.plugin_configs import register_plugin_configs
from harness.measure.config import ConfigError

PROG = "attnbench-advise"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        print(f"{PROG}: {message}", file=sys.stderr)
        sys.exit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Which attention for this setting on this machine: stored rows, missing "
        "points measured, arms ranked by the report's Which-attention rule.",
    )
    p.add_argument("folders", nargs="*", default=["results"], help="folders of stored rows")
    p.add_argument("--seq-len", type=int, required=True, help="query length (decode: context)")
    p.add_argument("--kv-len", type=int, help="key/value length (default: seq-len)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, help="key/value heads (default: heads)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", help="float16, bfloat16, float32, float64")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--causal", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--mode", default="prefill", help=f"one of {', '.join(MODES)}")
    p.add_argument("--max-memory", help="memory cap, e.g. 2GiB, 512MB")
    p.add_argument("--max-error", type=float, help="largest relative error vs exact attention")
    p.add_argument(
        "--quality-tolerance", type=float, help="trained quality within this of exact attention"
    )
    p.add_argument("--quality-task", help="the training task it refers to (mqar, chars)")
    p.add_argument("--variants", help="comma-separated variants to consider (default: all)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--time-limit", type=float, default=TIME_LIMIT, help="seconds of measuring")
    p.add_argument("--no-measure", action="store_true", help="stored rows only")
    p.add_argument(
        "--tune", action="store_true", help="tune engine knobs not in the cache (slower)"
    )
    p.add_argument("--out", default="results", help="results root for new rows")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return p


def cli(argv: Sequence[str] | None = None) -> int:
    """Console script ``attnbench-advise`` (module docstring); returns the exit code."""
    args = parser().parse_args(argv)
    register_schema()
    register_plugin_configs()
    try:
        setting = Setting(
            seq_len=args.seq_len, heads=args.heads, head_dim=args.head_dim, kv_len=args.kv_len,
            kv_heads=args.kv_heads, batch=args.batch, dtype=args.dtype, device=args.device,
            causal=args.causal, mode=args.mode, max_memory_bytes=parse_memory(args.max_memory),
            max_error=args.max_error, quality_tolerance=args.quality_tolerance,
            quality_task=args.quality_task, threads=args.threads,
        )  # fmt: skip
        names = [n.strip() for n in args.variants.split(",")] if args.variants else None
        answer = advise(
            setting, args.folders, args.out, args.time_limit, names, not args.no_measure,
            log=lambda line: print(line, file=sys.stderr, flush=True), tune=args.tune,
        )  # fmt: skip
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(answer, indent=1, default=str, ensure_ascii=False)
        if args.json
        else text(answer)
    )
    return 0


def main() -> None:
    sys.exit(cli())


if __name__ == "__main__":
    main()
