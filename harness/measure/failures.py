"""How a failing measurement reads in its row: the status and reason of an exception."""

from __future__ import annotations

from typing import Any

import torch


class NonFinite(Exception):
    """A measured call produced NaN or Inf."""


def classify(exc: BaseException) -> tuple[str, str]:
    """Row ``(status, reason)`` for an exception: ``oom``, ``nan`` or ``error``."""
    msg = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ""
    if isinstance(exc, NonFinite):
        return "nan", msg
    cuda_oom = getattr(torch.cuda, "OutOfMemoryError", ())
    lowered = msg.lower()
    if (
        isinstance(exc, MemoryError)
        or (cuda_oom and isinstance(exc, cuda_oom))
        or "defaultcpuallocator: can't allocate" in lowered
        or "out of memory" in lowered
    ):
        return "oom", f"{type(exc).__name__}: {msg}"
    return "error", f"{type(exc).__name__}: {msg}"


def finite(value: Any) -> bool:
    """Whether every tensor of ``value`` (a tensor or a tuple of them) is free of NaN and Inf."""
    tensors = value if isinstance(value, (tuple, list)) else (value,)
    return all(bool(torch.isfinite(t).all()) for t in tensors if isinstance(t, torch.Tensor))
