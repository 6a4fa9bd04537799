"""Trained quality for advise: the verdicts of one training setting, read from train rows.

Trained quality does not depend on the machine, so rows of any machine count. Of the training
settings with the setting's causal flag (and the named task, when one is), the one whose length is
nearest the user's is used (ties: the longer); its arms get the report's verdicts against exact
attention (:func:`harness.analysis.which.verdicts`). An arm of advise gets the verdict of the
same variant at the same knob value; where the training rows hold the variant only at other
knob values, those are shown and the verdict is left empty (never guessed).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd

from harness.advise.setting import Setting
from harness.analysis.trained import arm_summary, knob_key, settings, train_arms
from harness.analysis.which import TOLERANCE, reference, verdicts


@dataclasses.dataclass
class Trained:
    """The training setting advise reads, its arms and their verdicts.

    Args:
        task: ``mqar`` or ``chars``; None when no training rows fit.
        setting: The setting's label (length, model, step budget).
        n: Its length.
        metric: ``accuracy`` (higher is better) or ``bpc`` (lower).
        tolerance: The tolerance the verdicts use.
        summary: :func:`harness.analysis.trained.arm_summary` plus ``verdict``.
        exact_value: Exact attention's value (the best exact arm's mean).
        note: Why there is no answer (no rows, no exact arm), else empty.
    """

    task: str | None = None
    setting: str = ""
    n: int | None = None
    metric: str = ""
    tolerance: float = math.nan
    summary: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    exact_value: float = math.nan
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (without the summary)."""
        return {
            "task": self.task, "setting": self.setting, "n": self.n, "metric": self.metric,
            "tolerance": self.tolerance, "exact_value": self.exact_value, "note": self.note,
        }  # fmt: skip


def _nearest(groups: list[tuple[str, pd.DataFrame]], n: int) -> tuple[str, pd.DataFrame]:
    def distance(item: tuple[str, pd.DataFrame]) -> tuple[float, float]:
        length = float(item[1]["q_len"].iloc[0])
        return abs(math.log(max(length, 1) / n)), -length

    return min(groups, key=distance)


def trained(df: pd.DataFrame, setting: Setting) -> Trained:
    """The training setting nearest the user's and its verdicts (module docstring)."""
    task = setting.quality_task
    wanted = f"task {task}" if task else "any task"
    if not len(df) or "task" not in df:
        return Trained(task=task, note=f"no trained-quality rows ({wanted})")
    rows = df[df["task"] == "train"]
    if len(rows):
        rows = train_arms(rows)
        rows = rows[rows["causal"] == bool(setting.causal)]
        if task:
            rows = rows[rows["train_task"] == task]
    if not len(rows):
        causal = "causal" if setting.causal else "bidirectional"
        return Trained(task=task, note=f"no trained-quality rows ({wanted}, {causal})")
    label, group = _nearest(settings(rows), setting.seq_len)
    first = group.iloc[0]
    metric = str(first["metric"])
    tolerance = setting.quality_tolerance
    if tolerance is None:
        tolerance = TOLERANCE.get(metric, math.nan)
    summary = arm_summary(group)
    found = Trained(
        task=str(first["train_task"]), setting=label, n=int(first["q_len"]), metric=metric,
        tolerance=float(tolerance),
    )  # fmt: skip
    best_exact = reference(summary) if len(summary) else None
    if best_exact is None:
        found.note = f"no finished exact-attention run in {label}"
        return found
    found.summary = summary.assign(verdict=verdicts(summary, float(tolerance)))
    found.exact_value = float(best_exact["value"])
    return found


def verdict_of(found: Trained, variant: str, knob_value: Any, exact: bool) -> dict[str, Any]:
    """An advise arm's trained verdict: ``verdict`` (None unless the same variant and knob value
    ran), ``value``, ``arm`` (the trained arm read) and ``text`` for the table."""
    empty = {"verdict": None, "value": None, "arm": None}
    if not len(found.summary):
        return empty | {"text": "no rows"}
    mine = found.summary[found.summary["variant"] == variant]
    if exact and not len(mine):  # exact attention is the level itself
        return {"verdict": "within", "value": found.exact_value, "arm": "exact", "text": "exact"}
    if not len(mine):
        return empty | {"text": f"no rows for {variant}"}
    key = knob_key(knob_value)
    same = mine[mine["knob_value"].map(lambda v: knob_key(v) == key)]
    if len(same):
        arm = same.iloc[0]
        text = f"{arm['verdict']} ({arm['value']:.3g} vs {found.exact_value:.3g})"
        return {"verdict": arm["verdict"], "value": float(arm["value"]), "arm": arm["arm"],
                "text": text}  # fmt: skip
    others = "; ".join(f"{a.arm}: {a.verdict}" for a in mine.itertuples())
    return empty | {"text": f"not at this knob ({others})"}


def trained_candidates(found: Trained) -> list[tuple[str, Any]]:
    """(variant, knob value) of the non-exact trained arms within tolerance: worth measuring at
    the user's setting when a trained-quality tolerance is asked for."""
    if not len(found.summary):
        return []
    good = found.summary[(found.summary["verdict"] == "within") & ~found.summary["exact"]]
    return [(a.variant, knob_key(a.knob_value)) for a in good.itertuples()]
