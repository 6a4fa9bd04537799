"""Validators of variant and experiment parameters: the message names the field and the allowed
values (``linformer: k=0 must be an integer >= 1``). Re-exported by :mod:`variants.base`."""

from __future__ import annotations

from typing import Any


class VariantConfigError(ValueError):
    """A variant parameter has a value outside its allowed range (message names the field)."""


def check_int(
    owner: str | None,
    field: str,
    value: Any,
    low: int | None = None,
    high: int | None = None,
    error: type[Exception] = VariantConfigError,
) -> int:
    """Raise ``error`` unless ``value`` is an int (not a bool) in ``[low, high]``.

    The one integer validator of the project (variants, the harness's config and experiment
    checks all call it). The message names the owner and field and the allowed range, e.g.
    ``linformer: k=0 must be an integer >= 1``.

    Args:
        owner: Prefix of the message (a variant or experiment name), or None.
        field: The parameter's name.
        value: The value to check.
        low: Smallest allowed value (None: no bound).
        high: Largest allowed value (None: no bound).
        error: Exception class to raise (the harness passes its ``ConfigError``).
    """
    ok = not isinstance(value, bool) and isinstance(value, int)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        if low is not None and high is not None:
            allowed = f"in {low}..{high}"
        elif low is not None:
            allowed = f">= {low}"
        elif high is not None:
            allowed = f"<= {high}"
        else:
            allowed = ""
        prefix = f"{owner}: " if owner else ""
        raise error(f"{prefix}{field}={value!r} must be an integer {allowed}".rstrip())
    return value


def check_positive_int(variant: str, field: str, value: Any) -> int:
    """Raise :class:`VariantConfigError` unless ``value`` is an int >= 1."""
    return check_int(variant, field, value, low=1)


def check_nonneg_int(variant: str, field: str, value: Any) -> int:
    """Raise :class:`VariantConfigError` unless ``value`` is an int >= 0."""
    return check_int(variant, field, value, low=0)


def check_choice(
    variant: str | None,
    field: str,
    value: Any,
    allowed: tuple[str, ...],
    error: type[Exception] = VariantConfigError,
) -> str:
    """Raise ``error`` unless ``value`` is one of ``allowed`` (prefix and error as check_int)."""
    if value not in allowed:
        prefix = f"{variant}: " if variant else ""
        raise error(f"{prefix}{field}={value!r} is not one of {', '.join(map(str, allowed))}")
    return value
