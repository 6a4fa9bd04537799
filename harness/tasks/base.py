"""The task protocol: what a task declares, and what its report section receives.

A task is one kind of measurement (attention, realmodel, train, ...). It lives in its own folder,
``harness/tasks/<name>/``, and is described by a :class:`Task`: its typed config block, its
``measure(point, factory, out_dir) -> rows`` function, the columns it adds to the rows, and its
report section. Functions and classes are named as ``"module:attribute"`` strings (or given as
objects), so the registry imports nothing heavy: the app loads a task's measurement only when a
point asks for it, and the report loads only the report sections.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def load(ref: str | Any) -> Any:
    """The object named by ``"package.module:attribute"``; an object is returned as it is."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of the suite.

    Args:
        name: The config's ``task`` value and the rows' ``task`` column.
        measure: ``measure(point, factory, out_dir) -> list[dict]``: the rows of one valid point
            (never raises for a failing point: the failure is a row's ``status``).
        config: Dataclass of the task's config block, ``cfg.<name>`` (None: no block). Its field
            defaults are the only defaults; ``__post_init__`` raises
            :class:`harness.measure.config.ConfigError` naming the field for a value out of range.
        report: ``section(ctx: ReportContext) -> list[str]``: the task's markdown section with
            its figures (empty when its rows give nothing to show); None: no section.
        columns: The columns the task adds after :data:`harness.analysis.rows.COLUMNS`.
        title: The heading of its report section.
        tunes: True when the task tunes the variant's engine knobs itself, outside its timed
            calls (``variant.tune``); otherwise the app runs it with the tuner suspended
            (:func:`variants.tuning.suspended`: cached tuned values or the defaults).
    """

    name: str
    measure: str | Callable[..., list[dict[str, Any]]]
    config: str | type | None = None
    report: str | Callable[[ReportContext], list[str]] | None = None
    columns: tuple[str, ...] = ()
    title: str = ""
    tunes: bool = False

    def measure_fn(self) -> Callable[..., list[dict[str, Any]]]:
        """The measurement function (imported now)."""
        return load(self.measure)

    def config_class(self) -> type | None:
        """The config dataclass (imported now), or None."""
        return None if self.config is None else load(self.config)

    def report_fn(self) -> Callable[[ReportContext], list[str]] | None:
        """The report section function (imported now), or None."""
        return None if self.report is None else load(self.report)


@dataclasses.dataclass
class ReportContext:
    """What a task's report section gets.

    Args:
        rows: This task's rows, prepared (``series``, ``device_key`` columns).
        all_rows: Every row of the report, prepared (a section may compare with other tasks').
        out: The report folder (figures are written here; links are relative to it).
        devices: The report's device keys, sorted.
        folders: The folders the rows came from (for files beside the rows).
        figures: Names of figures to draw (None: all).
        options: The report's other settings (``heatmap``, ``reference_kv_len``).
    """

    rows: Any
    all_rows: Any
    out: Path
    devices: list[str]
    folders: list[Path]
    figures: Sequence[str] | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
