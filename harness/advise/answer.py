"""Advise's answer for one setting: stored rows, the missing points measured, the arms ranked.

:func:`advise` runs the steps: validate the setting (:mod:`.setting`), read the stored rows of
this machine at the setting (:mod:`.lookup`) and the trained-quality rows (:mod:`.quality`),
plan the default points (:mod:`.plan`) and measure those the rows lack (:mod:`.run`), then rank
every arm with the report's rule (:func:`harness.analysis.which.rank`). The answer is a plain
dict (``--json`` prints it; :mod:`.render` writes the text).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

import variants
from harness import tasks
from harness.advise import lookup
from harness.advise.plan import (
    FALLBACK_EXACT,
    Planned,
    arm_overrides,
    check_names,
    compose_points,
    default_arms,
    planned,
)
from harness.advise.quality import trained, trained_candidates, verdict_of
from harness.advise.render import recommendation
from harness.advise.run import EXPERIMENT, measure_points
from harness.advise.setting import MODE_WORDS, Setting, check
from harness.analysis.which import rank
from harness.measure.config import ConfigError

#: Default time limit of the measurements, in seconds.
TIME_LIMIT = 120.0


def _plans(setting: Setting, found, names: list[str] | None) -> list[Planned]:
    """The default points, the trained arms worth measuring, and the fallback exact one last."""
    plans = default_arms(setting, names)
    if setting.quality_tolerance is not None or setting.quality_task is not None:
        for variant, value in trained_candidates(found):
            if names is None or variant in names:
                plans.append(planned(setting, variant, arm_overrides(variant, value)))
    if names is None:
        plans.append(planned(setting, FALLBACK_EXACT, arm_overrides(FALLBACK_EXACT)))
    unique: dict[str, Planned] = {}
    for plan in plans:
        unique.setdefault(" ".join(plan.overrides), plan)
    return list(unique.values())


def _exact_ran(rows: Iterable[dict[str, Any]]) -> bool:
    return any(r.get("exact") and r.get("status") == "ok" for r in rows)


def _missing(plans: list[Planned], rows: pd.DataFrame, fallback: bool) -> list[Planned]:
    """The plans the stored rows lack; the fallback exact variant only while no stored exact
    backend ran at the setting."""
    exact_ran = bool(((rows["status"] == "ok") & rows["exact"]).any()) if len(rows) else False
    out = []
    for plan in plans:
        point = plan.point
        if fallback and plan.variant == FALLBACK_EXACT and exact_ran:
            continue
        if not lookup.covers(rows, point.variant, point.params, point.point_id()):
            out.append(plan)
    return out


def _invalid_arms(invalid: list[tuple[Planned, str]], table: pd.DataFrame) -> pd.DataFrame:
    """Arms for the plans whose point the setting rules out (not measured, not stored)."""
    out = []
    for plan, reason in invalid:
        if plan.variant in set(table["variant"]):
            continue  # rows of it exist (another knob)
        cls = variants.get_class(plan.variant)
        out.append(
            {
                "arm": plan.variant, "variant": plan.variant, "knob": cls.knob,
                "knob_value": None, "params": {}, "all_params": {}, "exact": bool(cls.exact),
                "approximates_softmax": bool(getattr(cls, "approximates_softmax", True)),
                "status": "unsupported", "reason": reason, "evidence": [],
            }
        )  # fmt: skip
    return pd.DataFrame(out, columns=table.columns)


def _command(setting: Setting, arm: pd.Series, plans: list[Planned]) -> str:
    """The command that measures this arm at the setting: its plan's, else one built for it."""
    for plan in plans:
        point = plan.point
        if point.variant == arm["variant"] and lookup.matches(arm["all_params"], point.params):
            return plan.command
    extra = arm_overrides(arm["variant"], arm["knob_value"], arm["params"])
    return planned(setting, arm["variant"], extra).command


def advise(
    setting: Setting,
    folders: Iterable[str | Path] = ("results",),
    out: str | Path = "results",
    time_limit: float = TIME_LIMIT,
    variant_names: list[str] | None = None,
    measure: bool = True,
    log: Callable[[str], None] = print,
    tune: bool = False,
) -> dict[str, Any]:
    """The answer for ``setting`` (module docstring).

    Args:
        setting: The user's setting (validated here).
        folders: Folders of stored rows (the default: ``results/``); ``out/advise`` is always
            read too, so a second advise finds what the first measured.
        out: The results root new rows are stored under (``out/advise/<time>/``).
        time_limit: Seconds of measuring; no point starts after it.
        variant_names: Only these variants (None: the default set, :mod:`.plan`).
        measure: False: answer from stored rows only.
        log: Where progress lines go.
        tune: Search the engine knobs of points whose shape the tuning cache lacks (else the
            cached values or the defaults; :mod:`.run`).

    Raises:
        ConfigError: A field out of range, a device this machine lacks, or a setting no variant
            could run (one line, naming why).
    """
    started = time.perf_counter()
    setting = check(setting, tasks.get("train").config_class())
    facts = lookup.machine(setting.device)
    store = Path(out) / EXPERIMENT
    read = list(dict.fromkeys([*map(Path, folders), store]))
    stored = lookup.load(read)
    variant_names = check_names(variant_names)
    rows = lookup.at_setting(stored, setting, facts)
    if variant_names is not None and len(rows):
        rows = rows[rows["variant"].isin(variant_names)]
    found = trained(stored, setting)
    plans = _plans(setting, found, variant_names) if measure else []
    invalid = compose_points(plans)
    plans = [p for p in plans if p.point is not None]
    fallback = variant_names is None
    missing = _missing(plans, rows, fallback) if measure else []
    measured = None
    if missing:
        names = ", ".join(dict.fromkeys(p.variant for p in missing))
        log(
            f"advise: {len(missing)} point(s) missing on this machine ({names}); measuring them "
            f"now, time limit {time_limit:.0f} s (no point starts after it); rows go to {store}/"
        )

        def skip(plan: Planned, new: list[dict[str, Any]]) -> bool:
            return fallback and plan.variant == FALLBACK_EXACT and _exact_ran(new)

        measured = measure_points(missing, Path(out), time_limit, log, skip, tune)
        if measured.folder is not None and measured.rows:
            fresh = lookup.at_setting(lookup.load([measured.folder]), setting, facts)
            rows = pd.concat([rows, fresh], ignore_index=True) if len(rows) else fresh
    table = lookup.arms(rows, setting)
    if invalid:
        table = pd.concat([table, _invalid_arms(invalid, table)], ignore_index=True)
    if not len(table) and not measure:
        raise ConfigError("no stored rows at this setting on this machine (--no-measure given)")
    if not len(table) or not (table["status"] == "ok").any():
        reasons = sorted({f"{a.arm}: {a.reason or a.status}" for a in table.itertuples()})
        detail = "; ".join(reasons[:4]) or "nothing could be measured within the time limit"
        raise ConfigError(f"the suite cannot measure this setting here ({detail})")
    quality = [verdict_of(found, a.variant, a.knob_value, a.exact) for a in table.itertuples()]
    table["trained_verdict"] = [q["verdict"] for q in quality]
    table["trained"] = quality
    strict = setting.quality_tolerance is not None or setting.quality_task is not None
    ranked = rank(
        table, setting.max_memory_bytes, setting.max_error, "strict" if strict else "known"
    )
    ranked["command"] = [_command(setting, a, plans) for _, a in ranked.iterrows()]
    answer = {
        "recommendation": recommendation(ranked, setting, found),
        "setting": {
            **{k: getattr(setting, k) for k in Setting.__dataclass_fields__},
            "pass": setting.pass_name,
            "times": MODE_WORDS[setting.mode],
        },
        "machine": facts,
        "trained": found.as_dict(),
        "arms": [_arm_dict(a) for _, a in ranked.iterrows()],
        "measured": {
            "points": len({r["point_id"] for r in measured.rows}) if measured else 0,
            "seconds": round(measured.seconds, 1) if measured else 0.0,
            "folder": str(measured.folder) if measured and measured.rows else None,
            "left_out": [p.command for p in measured.left_out] if measured else [],
        },
        "folders": [str(f) for f in read],
        "seconds": round(time.perf_counter() - started, 1),
    }
    return _clean(answer)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities None, numpy scalars plain, containers cleaned through."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, str):
        return _clean(value.item())
    return value


def _arm_dict(arm: pd.Series) -> dict[str, Any]:
    keys = (
        "rank", "arm", "variant", "knob", "knob_value", "exact", "approximates_softmax",
        "status", "reason", "qualified", "excluded", "time_ms", "speedup", "peak_mem_bytes",
        "mem_ratio", "rel_err", "baseline_uniform_rel_err", "inputs", "trained", "evidence",
        "command",
    )  # fmt: skip
    out = {k: _clean(arm.get(k)) for k in keys}
    out["rank"] = None if out["rank"] is None else int(out["rank"])
    return out
