"""A saved transfer fit measured by a realmodel point: ``realmodel.fit_path``.

A transfer point saves its fit beside its rows as ``transfer_<variant>_<knob>.pt``
(:func:`harness.minilm.layerwise.save_fit`): one fitted instance per MiniLM layer. Given such a
file, a realmodel point measures the model with those instances, each in its own layer, instead
of the untrained variant the point builds. The fit must be of the point's variant, at its knob
value and ``kv_len`` (Linformer's projections are built for one length); otherwise, or when the
file is missing or unreadable, :func:`load_point_fit` raises a :class:`ValueError` naming the
field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.minilm.layerwise import LayerwiseAttention, load_fit
from variants.base import AttentionVariant

#: The config field that names a saved fit.
FIELD = "realmodel.fit_path"


def _mismatch(path: Any, what: str, theirs: Any, mine: Any) -> ValueError:
    return ValueError(
        f"{FIELD}={str(path)!r} holds a fit for {what}={theirs!r} but the point's {what} is "
        f"{mine!r}: use the fit saved for this point's variant, knob and kv_len"
    )


def load_point_fit(path: str | Path, variant: AttentionVariant, device: str) -> LayerwiseAttention:
    """The fitted per-layer instances saved at ``path``, checked against the point's variant.

    Args:
        path: A ``transfer_<variant>_<knob>.pt`` written by a transfer point.
        variant: The point's variant as the point builds it (its name, knob value and
            ``kv_len`` must match the fit's; its other settings need not: the fit's are used,
            e.g. Linformer's ``init=learned``).
        device: Where the fitted instances go.

    Raises:
        ValueError: The file is missing or unreadable, or it was fitted for another variant,
            knob value or ``kv_len`` (the message names :data:`FIELD` and what differs).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(
            f"{FIELD}={str(path)!r}: no such file (a transfer_<variant>_<knob>.pt saved beside "
            "the rows of attnbench +experiment=transfer)"
        )
    try:
        fitted = load_fit(file, device)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear message
        reason = f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{FIELD}={str(path)!r} cannot be loaded: {reason}") from exc
    if fitted.name != variant.name:
        raise _mismatch(path, "variant", fitted.name, variant.name)
    theirs, mine = fitted.config(), variant.config()
    if variant.knob is not None and theirs.get(variant.knob) != mine.get(variant.knob):
        raise _mismatch(path, variant.knob, theirs.get(variant.knob), mine.get(variant.knob))
    if "kv_len" in theirs and "kv_len" in mine and theirs["kv_len"] != mine["kv_len"]:
        raise _mismatch(path, "kv_len", theirs["kv_len"], mine["kv_len"])
    return fitted
