"""The ``measure`` config block, and the error every config check raises.

Field defaults here are the only defaults (Hydra's ConfigStore holds this class as the schema of
``cfg.measure``); ``__post_init__`` checks ranges with a one-line error naming the field.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
    """A config value outside its allowed range (the message names the field)."""


def check_positive(field: str, value: Any, *, integer: bool = False, optional: bool = False):
    """``value`` when it is a number > 0 (an int if ``integer``; None if ``optional``).

    Other ranges: :func:`check_number` and :func:`check_integer`.
    """
    if value is None and optional:
        return value
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        kind = "an integer" if integer else "a number"
        tail = " or null" if optional else ""
        raise ConfigError(f"{field}={value!r} must be {kind} > 0{tail}")
    return value


def check_number(
    field: str,
    value: Any,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
):
    """``value`` when it is a number (not a bool) from ``low`` up (to ``high`` if given).

    The ends are included unless ``low_open``/``high_open``; the message names the field and the
    range: ``train.target=-1 must be a number >= 0``, ``train.plateau_window=1.0 must be a
    number in (0, 1)``.
    """
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        if high is None:
            allowed = f"{'>' if low_open else '>='} {low}"
        else:
            allowed = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{field}={value!r} must be a number {allowed}")
    return value


def check_integer(field: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` when it is an int (not a bool) in ``[low, high]``: :func:`variants.base.check_int`
    raising :class:`ConfigError` (``decode.steps=0 must be an integer >= 1``)."""
    from variants.validation import check_int  # imported here: importing this module stays light

    return check_int(None, field, value, low=low, high=high, error=ConfigError)


@dataclasses.dataclass
class MeasureConfig:
    """What an attention point measures and how.

    Args:
        accuracy: Compare with the float64 reference (errors, divergences, gradients).
        timing: Time each pass (median and IQR).
        memory: Measure each pass's peak memory.
        attn_matrix_max_n: Effective attention matrix (TV, JS, ...) only up to this length.
        min_run_time: Seconds of timed calls per pass (torch.utils.benchmark's clock).
        flush_l2: CUDA: time each call with CUDA events after an L2 flush.
        memory_budget_gb: CPU: a pass whose estimate exceeds this (GB) is recorded as
            over_budget; None = no budget.
        reference_max_work: Float64 reference FLOPs; above it a seeded sample of query rows.
        threads: Torch threads; None = torch's default (recorded in every row).
    """

    accuracy: bool = True
    timing: bool = True
    memory: bool = True
    attn_matrix_max_n: int = 2048
    min_run_time: float = 0.2
    flush_l2: bool = False
    memory_budget_gb: float | None = 16.0
    reference_max_work: float | None = 1.0e12
    threads: int | None = None

    def __post_init__(self) -> None:
        check_positive("measure.attn_matrix_max_n", self.attn_matrix_max_n, integer=True)
        check_positive("measure.min_run_time", self.min_run_time)
        check_positive("measure.memory_budget_gb", self.memory_budget_gb, optional=True)
        check_positive("measure.reference_max_work", self.reference_max_work, optional=True)
        check_positive("measure.threads", self.threads, integer=True, optional=True)
