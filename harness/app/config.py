"""The typed config: the schema of ``attnbench``'s config, with every default in one place.

:func:`register_schema` stores the schema in Hydra's ConfigStore as ``attnbench_schema``
(``conf/config.yaml`` lists it first in its defaults), so Hydra itself rejects an unknown key or
a value of the wrong type, and ``attnbench --cfg job`` shows every default. The schema is
:class:`MainConfig` plus one block per registered task that has a config
(``cfg.<task name>``, the task's own dataclass). Ranges are checked when the point is built
(:meth:`harness.app.point.Point.from_cfg`).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from typing import Any

from hydra.core.config_store import ConfigStore

from harness import tasks
from harness.measure.config import MeasureConfig

SCHEMA_NAME = "attnbench_schema"


@dataclasses.dataclass
class MainConfig:
    """The fields every point has (README "Running" says what each means).

    ``variant`` and ``inputs`` are config group choices (``variant=NAME``, ``inputs=NAME``):
    their parameters differ per choice and are checked when the variant and inputs are built.
    """

    variant: Any = None
    inputs: Any = None
    experiment_name: str = "adhoc"  # presets (+experiment=NAME) set it; names the results folder
    task: str = "attention"  # one of harness.tasks.names()
    batch: int = 1
    heads: int = 8
    kv_heads: int | None = None  # key/value heads (grouped-query attention); None = heads
    seq_len: int = 1024  # query length (and key length unless kv_len is set)
    kv_len: int | None = None  # key/value length for cross-attention; None = seq_len
    head_dim: int = 64
    dtype: str = "float32"  # float16 | bfloat16 | float32 | float64
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda
    causal: bool = False  # bottom-right aligned when kv_len != seq_len
    seed: int = 0  # input and variant seed
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])  # randomised repeats
    passes: list[str] = dataclasses.field(default_factory=lambda: ["fwd", "bwd", "fwd_bwd"])
    knob: Any = None  # sets the variant's own knob (window, k, nb_features, ...) if not None
    force: bool = False  # re-measure points whose rows already exist in the sweep folder
    measure: MeasureConfig = dataclasses.field(default_factory=MeasureConfig)


def schema() -> type:
    """:class:`MainConfig` with a field per registered task that has a config block."""
    blocks = []
    for name, task in tasks.tasks().items():
        cls = task.config_class()
        if cls is not None:
            blocks.append((name, cls, dataclasses.field(default_factory=cls)))
    return dataclasses.make_dataclass("AttnbenchConfig", blocks, bases=(MainConfig,))


def conf_dir() -> str:
    """The config folder: ``conf/`` (installed as the package ``harness.conf``)."""
    return str(importlib.resources.files("harness.conf"))


def register_schema() -> None:
    """Store the schema in Hydra's ConfigStore (``conf/config.yaml`` names it)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=schema())
