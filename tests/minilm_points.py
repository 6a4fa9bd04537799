"""Points of the MiniLM tasks (realmodel, transfer) for tests, built without Hydra."""

from __future__ import annotations

from typing import Any

import variants
from harness import tasks
from harness.app.point import Point
from harness.measure.config import MeasureConfig
from variants.base import AttentionVariant


def minilm_point(
    task: str,
    variant: str | type[AttentionVariant],
    params: dict[str, Any] | None = None,
    *,
    kv_len: int = 32,
    dtype: str = "float32",
    seed: int = 0,
    **block: Any,
) -> Point:
    """A CPU point of ``task`` for ``variant`` (a name or a class) with ``block`` as the task's
    config (its dataclass: the ranges are checked), MiniLM's shape and ``kv_len`` keys."""
    cls = variants.get_class(variant) if isinstance(variant, str) else variant
    return Point(
        variant_cls=cls,
        task=task,
        variant=cls.name,
        params=dict(params or {}),
        batch=1,
        heads=12,
        q_len=kv_len,
        kv_len=kv_len,
        head_dim=32,
        dtype=dtype,
        device="cpu",
        causal=False,
        inputs="pydoc",
        inputs_params={},
        seed=seed,
        seeds=[seed],
        passes=["fwd"],
        measure=MeasureConfig(),
        task_cfg=tasks.get(task).config_class()(**block),
    )
