"""``attnbench-variants``: list every variant, built-in or plugin, with its status.

A plugin whose import fails, or whose class breaks the interface, is listed as ``broken`` with
the reason; sweeps skip it (it is not in ``variants.available()``) and the others are unaffected.

Usage::

    attnbench-variants            # table
    attnbench-variants --json     # one JSON list, for scripts
    attnbench-variants --strict   # exit 1 when any variant is broken (CI)
    python -m harness.app.list_variants
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from harness.app.plugin_configs import describe_variants


def _notes(row: dict[str, Any]) -> str:
    if not row["ok"]:
        return row["error"] or "unusable"
    if row["exact"]:
        caps = ["exact"]
    elif row.get("approximates_softmax", True):
        caps = ["approximate"]
    else:
        caps = ["own operator (not softmax)"]
    causal_only = not row.get("supports_bidirectional", True)
    caps += ["causal only" if causal_only else "causal"] if row["supports_causal"] else []
    caps += ["cross"] if row["supports_cross"] else []
    if row["knob"]:
        caps.append(f"knob={row['knob']}")
    if row["distribution"]:
        caps.append(f"from {row['distribution']}")
    return ", ".join(caps)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The listing as an aligned text table (name, source, status, class, notes)."""
    header = ("name", "source", "status", "class", "notes")
    lines = [
        (r["name"], r["source"], "ok" if r["ok"] else "broken", r["target"], _notes(r))
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1]
        for line in [header, *lines]
    )


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``attnbench-variants``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="attnbench-variants",
        description="List attention variants (built-in and plugins) and why any is unusable.",
    )
    parser.add_argument("--json", action="store_true", help="print the listing as JSON")
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when any variant is broken"
    )
    args = parser.parse_args(argv)
    rows = describe_variants()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
        broken = [r for r in rows if not r["ok"]]
        if broken:
            print(f"\n{len(broken)} of {len(rows)} variants cannot be used (reasons above).")
    return 1 if args.strict and any(not r["ok"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(cli())
