"""Advise's words: the recommendation in one line, and the ranked table with its evidence."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.advise.quality import Trained
from harness.advise.setting import Setting
from harness.report.markdown import fmt, markdown_table


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def size(nbytes: Any) -> str:
    """Bytes in binary units: ``9.3 MiB``."""
    n = _num(nbytes)
    if not math.isfinite(n):
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.3g} TiB"


def duration(ms: Any) -> str:
    """Milliseconds to three significant digits, whole above 1000: ``1,128 ms``."""
    t = _num(ms)
    if not math.isfinite(t):
        return "–"
    return f"{t:,.0f} ms" if t >= 1000 else f"{t:.3g} ms"


def times(ratio: Any) -> str:
    """``3.2×`` (``–`` for none)."""
    r = _num(ratio)
    if not math.isfinite(r):
        return "–"
    return f"{r:.0f}×" if r >= 100 else f"{r:.3g}×" if r >= 10 else f"{r:.2f}×"


def error_cell(arm: Any) -> str:
    """The approximation error beside the uniform-attention baseline (n/a where it does not
    apply)."""
    if bool(arm["exact"]):
        return "exact"
    if not bool(arm["approximates_softmax"]):
        return "n/a (not softmax)"
    err, base = _num(arm["rel_err"]), _num(arm["baseline_uniform_rel_err"])
    if not math.isfinite(err):
        return "not measured"
    return f"{err:.2g}" + (f" (uniform {base:.2g})" if math.isfinite(base) else "")


def _trained_text(found: Trained) -> str:
    if found.task is None or not found.setting:
        return found.note or "no trained-quality rows"
    return f"{found.task} n={found.n}" + (f": {found.note}" if found.note else "")


def recommendation(ranked: pd.DataFrame, setting: Setting, found: Trained) -> str:
    """The answer in plain words (the output's first line)."""
    ran = ranked[ranked["status"] == "ok"]
    exact = ran[ran["exact"].astype(bool)].sort_values("time_ms")
    ref = exact.iloc[0]["arm"] if len(exact) else None
    winners = ranked[ranked["rank"] == 1]
    if not len(winners):
        causes = sorted({e for e in ran["excluded"] if e})
        return (
            f"No variant meets the limits at this setting ({'; '.join(causes)}); "
            "loosen a limit or see the table."
        )
    w = winners.iloc[0]
    if bool(w["exact"]):
        text = f"Use exact attention ({w['arm']})"
        faster = ran[(ran["time_ms"] < w["time_ms"]) & ~ran["exact"].astype(bool)]
        if not len(faster):
            text += ": no approximation is faster here"
        else:
            f = faster.sort_values("time_ms").iloc[0]
            text += (
                f": the fastest approximation, {f['arm']} ({times(f['speedup'])} faster), is "
                f"excluded ({f['excluded']})"
            )
        if not len(found.summary):
            text += f"; trained quality: {_trained_text(found)}"
        return text + "."
    text = f"Use {w['arm']}: {times(w['speedup'])} faster than exact attention"
    text += f" ({ref})" if ref else " (no exact backend ran)"
    text += f", {times(w['mem_ratio'])} its memory"
    if bool(w["approximates_softmax"]):
        text += f", error {error_cell(w)}"
    else:
        text += " (its own operator, not an approximation of softmax)"
    quality = w["trained"] if isinstance(w["trained"], dict) else {}
    if quality.get("verdict") == "within":
        text += (
            f"; trained quality within {fmt(found.tolerance)} of exact attention "
            f"({quality['arm']}, {_trained_text(found)})"
        )
    else:
        text += (
            f"; trained quality unknown ({quality.get('text') or 'no rows'}; "
            f"{_trained_text(found)}): not guessed, check it before relying on it"
        )
    return text + "."


def table(answer: dict[str, Any]) -> str:
    """The ranked table (markdown), then each arm's evidence and command."""
    trained = answer["trained"]
    where = f" ({trained['task']} n={trained['n']})" if trained.get("setting") else ""
    memory = "state" if answer["setting"]["mode"] == "decode" else "peak memory"
    header = [
        "#", "variant", "time", "speed-up", memory, "memory ratio", "error (uniform)",
        f"trained{where}", "excluded",
    ]  # fmt: skip
    body = []
    for a in answer["arms"]:
        ran = a["status"] == "ok"
        body.append(
            [
                str(a["rank"]) if a["rank"] else "–",
                a["arm"],
                duration(a["time_ms"]) if ran else "–",
                times(a["speedup"]) if ran else "–",
                size(a["peak_mem_bytes"]) if ran else "–",
                times(a["mem_ratio"]) if ran else "–",
                error_cell(a) if ran else "–",
                (a.get("trained") or {}).get("text", "–"),
                a["excluded"] or "",
            ]
        )
    lines = [markdown_table(header, body), "", "Evidence (folder: point ids) and commands:"]
    for a in answer["arms"]:
        lines.append(f"- {a['arm']}:")
        for e in a["evidence"] or []:
            lines.append(f"    {e['folder']}: {', '.join(e['point_ids'])}")
        lines.append(f"    {a['command']}")
    return "\n".join(lines)


def text(answer: dict[str, Any]) -> str:
    """The whole output: recommendation, setting, table, evidence, notes."""
    s, m = answer["setting"], answer["machine"]
    count = m["threads"]
    threads = f", {count} thread{'s' if count != 1 else ''}" if m["device"] == "cpu" else ""
    limits = []
    if s["max_memory_bytes"]:
        limits.append(f"memory ≤ {size(s['max_memory_bytes'])}")
    if s["max_error"] is not None:
        limits.append(f"error ≤ {fmt(s['max_error'])}")
    t = answer["trained"]
    if s["quality_tolerance"] is not None or s["quality_task"] is not None:
        limits.append(f"trained quality within {fmt(t['tolerance'])} ({t['task'] or 'any task'})")
    grouped = f"/{s['kv_heads']}" if s["kv_heads"] != s["heads"] else ""
    lengths = f"context {s['kv_len']}" if s["mode"] == "decode" else (
        f"q{s['seq_len']} kv{s['kv_len']}"
    )  # fmt: skip
    shape = (
        f"B{s['batch']} H{s['heads']}{grouped} {lengths} d{s['head_dim']} {s['dtype']}"
        f"{' causal' if s['causal'] else ''}"
    )
    lines = [
        answer["recommendation"],
        "",
        f"Setting: {s['mode']}, {s['times']}; {shape}; {m['device_name']} ({m['device']}"
        f"{threads}). Limits: {', '.join(limits) or 'none'}.",
        f"Trained quality from: {t['setting'] or t['note']}"
        + (f" (tolerance {fmt(t['tolerance'])} {t['metric']})" if t["setting"] else ""),
        "",
        table(answer),
    ]
    measured = answer["measured"]
    if measured["points"]:
        lines += [
            "",
            f"Measured now: {measured['points']} point(s) in {measured['seconds']:.0f} s, stored "
            f"in {measured['folder']} (attnbench-report {measured['folder']} draws them).",
        ]
    if measured["left_out"]:
        lines += ["Left out by the time limit (run to add them):"]
        lines += [f"    {c}" for c in measured["left_out"]]
    return "\n".join(lines)
