"""The "Which attention?" table of the report: the markdown of the shared rule.

The rule (verdicts against exact attention, the fastest arm within tolerance, speed-up and
memory ratio against the fastest exact arm) is :mod:`harness.analysis.which`, which
``attnbench-advise`` applies too; terms (setting, arm, value) are
:mod:`harness.analysis.trained`'s. This module renders its entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from harness.analysis.which import (
    LEARNT,
    TOLERANCE,
    VERDICTS,
    reference,
    verdicts,
    which_attention,
)
from harness.report.markdown import fmt, markdown_table

__all__ = [
    "LEARNT", "TOLERANCE", "VERDICTS", "reference", "verdicts", "which_attention",
    "which_markdown",
]  # fmt: skip


def _tolerance_text(tolerance: Mapping[str, float]) -> str:
    names = {"accuracy": "accuracy (absolute)", "bpc": "bits per char"}
    return ", ".join(f"{fmt(v)} {names.get(k, k)}" for k, v in tolerance.items())


def _unlearnt(e: Mapping[str, Any]) -> str:
    floor = LEARNT.get(str(e["metric"]))
    if floor is None or e["exact_value"] >= floor:
        return ""
    return f" (not learnt: below {fmt(floor)})"


def _task_cell(e: Mapping[str, Any]) -> str:
    """The task and its parameters (the setting's first part): two MQAR settings of one length
    (say 4 and 8 pairs) stay apart."""
    return str(e["setting"]).split(";")[0].replace(f" n={fmt(e['n'])}", "")


def _exact_cell(e: Mapping[str, Any]) -> str:
    text = f"{e['exact_arm']}: {fmt(e['exact_value'])}"
    if "exact_min" in e and e["exact_min"] != e["exact_max"]:
        text += f" [{fmt(e['exact_min'])}–{fmt(e['exact_max'])}]"
    if e.get("exact_converged") is False:
        text += " (not converged)"
    return text + _unlearnt(e)


def _verdict_cells(e: Mapping[str, Any]) -> list[str]:
    grouped = e.get("verdicts") or {}
    cells = [f"{len(grouped.get('within', []))} of {e['arms']}"]
    for name in VERDICTS[1:]:
        arms = grouped.get(name, [])
        cells.append(f"{len(arms)}" + (f": {', '.join(arms)}" if arms else ""))
    return cells


def which_markdown(entries: list[dict[str, Any]], tolerance: Mapping[str, float]) -> str:
    """The "Which attention?" table of :func:`which_attention` with its lead text."""
    lead = (
        "For each task and sequence length: the fastest variant (training time per step) whose "
        f"trained value (mean over seeds) is within {_tolerance_text(tolerance)} of exact "
        "attention's (the best exact arm, its range over seeds in brackets; time and memory "
        "against the fastest exact arm). The answer may be exact attention itself. Speed-up = "
        "exact time / its time and memory ratio = its peak memory / exact's: from the training "
        "rows (one whole training step), and where the same folders hold attention rows of both "
        "at that length (pass fwd_bwd, same causal flag), from those (the attention call alone). "
        "An arm outside the tolerance is *worse* only when it converged and every seed of it is "
        "more than the tolerance from every seed of exact attention; *not converged* when a seed "
        "was still improving at the cap (its value is a bound, not its level); *unresolved* when "
        "the seeds' ranges come within the tolerance."
    )
    body = []
    for e in entries:
        if e.get("note") and "exact_arm" not in e:
            body.append([_task_cell(e), fmt(e["n"]), "–", "–", "–", "–", "–", e["note"]])
            body[-1] += ["–"] * 3
            continue
        if e.get("note"):
            body.append([_task_cell(e), fmt(e["n"]), _exact_cell(e), e["note"], "–", "–", "–"])
            body[-1] += _verdict_cells(e)
            continue
        attn = "–"
        if np.isfinite(e["attn_speedup"]) and np.isfinite(e["attn_mem_ratio"]):
            attn = f"{e['attn_speedup']:.2f}× / {e['attn_mem_ratio']:.2f}"
        body.append(
            [
                _task_cell(e),
                fmt(e["n"]),
                _exact_cell(e),
                f"{e['arm']}: {fmt(e['value'])}",
                f"{e['speedup']:.2f}×",
                f"{e['mem_ratio']:.2f}" if np.isfinite(e["mem_ratio"]) else "–",
                attn,
                *_verdict_cells(e),
            ]
        )
    header = [
        "task", "n", "exact attention", "fastest within tolerance", "speed-up (training step)",
        "memory ratio (training step)", "speed-up / memory ratio (attention fwd+bwd rows)",
        "arms within tolerance", "worse", "not converged", "unresolved",
    ]  # fmt: skip
    return lead + "\n\n" + markdown_table(header, body)
