"""The task registry: the one place that names every task.

Built-in tasks are listed in :data:`BUILTINS`; installed packages add theirs through the entry
point group ``attnbench.tasks`` (``name = "package.module:TASK"``, a :class:`Task`). The app
dispatches a point to ``get(point.task)`` and the report assembles the sections of
:func:`tasks` in order.
"""

from __future__ import annotations

import warnings
from importlib import metadata

from harness.tasks.base import ReportContext, Task, load

__all__ = ["BUILTINS", "ENTRY_POINT_GROUP", "ReportContext", "Task", "get", "names", "tasks"]

ENTRY_POINT_GROUP = "attnbench.tasks"

#: The columns a decode row adds (harness/tasks/decode/measure.py says what each is).
DECODE_COLUMNS = (
    "task", "q_tokens", "steps", "warmup", "cache_len", "gqa", "timing", "prefill_ms",
    "step_ms", "step_iqr_ms", "token_ms", "tokens_per_s", "state_bytes", "state_bytes_measured",
    "state_length", "step_context", "step_read_bytes", "achieved_gbs", "copy_gbs",
    "bandwidth_fraction", "decode_rel_err", "decode_max_abs_err", "forward_rel_err",
    "model_depth", "model_width", "model_mlp_ratio", "model_params", "model_step_ms",
    "model_step_iqr_ms", "model_tokens_per_s", "model_attention_share", "model_reason",
)  # fmt: skip

BUILTINS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            name="attention",
            measure="harness.tasks.attention.measure:measure",
            report="harness.tasks.attention.report:section",
            title="Results",
            tunes=True,
        ),
        Task(
            name="realmodel",
            measure="harness.tasks.realmodel.measure:measure",
            config="harness.tasks.realmodel.config:RealmodelConfig",
            report="harness.tasks.realmodel.report:section",
            title="Real-model fidelity (all-MiniLM-L6-v2)",
        ),
        Task(
            name="train",
            measure="harness.tasks.train.measure:measure",
            config="harness.tasks.train.config:TrainConfig",
            report="harness.tasks.train.report:section",
            title="Quality after training",
        ),
        Task(
            name="transfer",
            measure="harness.tasks.transfer.measure:measure",
            config="harness.tasks.transfer.config:TransferConfig",
            report="harness.tasks.transfer.report:section",
            title="Before / after transfer",
        ),
        Task(
            name="decode",
            measure="harness.tasks.decode.measure:measure",
            config="harness.tasks.decode.config:DecodeConfig",
            report="harness.tasks.decode.report:section",
            columns=DECODE_COLUMNS,
            title="Decoding: prefill and per-token step",
        ),
    )
}

_plugins: dict[str, Task] | None = None


def _plugin_tasks() -> dict[str, Task]:
    """Tasks of installed packages; a broken or clashing one is left out with a warning."""
    global _plugins
    if _plugins is None:
        _plugins = {}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                task = load(ep.value)
            except Exception as exc:  # a broken plugin must not stop the suite
                warnings.warn(f"task plugin {ep.value!r} cannot be loaded: {exc}", stacklevel=2)
                continue
            if not isinstance(task, Task) or task.name != ep.name:
                warnings.warn(
                    f"task plugin {ep.value!r} is not a Task named {ep.name!r}", stacklevel=2
                )
            elif ep.name in BUILTINS or ep.name in _plugins:
                warnings.warn(
                    f"task plugin {ep.value!r} reuses the name {ep.name!r}", stacklevel=2
                )
            else:
                _plugins[ep.name] = task
    return _plugins


def tasks() -> dict[str, Task]:
    """Every task by name: the built-ins in order, then installed plugins."""
    return {**BUILTINS, **_plugin_tasks()}


def names() -> list[str]:
    """The names a config's ``task`` may take."""
    return list(tasks())


def get(name: str) -> Task:
    """The task called ``name``; KeyError naming the allowed values otherwise."""
    found = tasks().get(name)
    if found is None:
        raise KeyError(f"task={name!r} is not one of {', '.join(names())}")
    return found
