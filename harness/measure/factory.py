"""Building a variant for a point, and what its class says about it.

The harness builds every variant for the point's key length and head dimension: constructors
take ``kv_len`` and ``head_dim``, and ``seed`` where the constructor names it.
:func:`shape_kwargs` is the one place that decides.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from variants.base import AttentionVariant

#: ``factory(seed) -> AttentionVariant``: builds the point's variant (randomised ones per seed).
Factory = Callable[[int], AttentionVariant]


def shape_kwargs(
    target: Callable[..., Any], kv_len: int, head_dim: int, seed: int | None = None
) -> dict[str, Any]:
    """The shape (and seed) keywords ``target`` accepts, for a variant of key length ``kv_len``.

    Args:
        target: A variant class, or a factory taking keyword arguments.
        kv_len: Key/value length the variant is built for.
        head_dim: Head dimension the variant is built for.
        seed: Seed of a randomised variant; passed where the constructor names ``seed`` (and to
            a factory that takes any keyword).

    Returns:
        ``kv_len``, ``head_dim`` and, where accepted, ``seed``.
    """
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    open_ended = any(p.kind == p.VAR_KEYWORD for p in params.values())
    out: dict[str, Any] = {"kv_len": kv_len, "head_dim": head_dim}
    if seed is not None and ("seed" in params or (open_ended and not isinstance(target, type))):
        out["seed"] = seed
    return out


def make_factory(
    cls: type[AttentionVariant], params: dict[str, Any], kv_len: int, head_dim: int
) -> Factory:
    """``factory(seed)`` building ``cls(**params)`` for key length ``kv_len`` and ``head_dim``."""

    def factory(seed: int) -> AttentionVariant:
        return cls(**params, **shape_kwargs(cls, kv_len, head_dim, seed))

    return factory


def describe(cls: type[AttentionVariant] | None, params: dict[str, Any]) -> dict[str, Any]:
    """The row columns a variant's class decides: ``exact``, ``approximates_softmax``
    (False for operators of their own: retention, the delta rule), ``randomized``, ``knob``,
    ``knob_value`` (the knob's value in ``params``); all ``None`` when the class is unknown."""
    if cls is None:
        return dict.fromkeys(("exact", "approximates_softmax", "randomized", "knob", "knob_value"))
    knob = cls.knob
    return {
        "exact": bool(cls.exact),
        "approximates_softmax": bool(getattr(cls, "approximates_softmax", True)),
        "randomized": bool(cls.randomized),
        "knob": knob,
        "knob_value": params.get(knob) if knob else None,
    }
