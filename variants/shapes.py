"""Input checks and masks every variant shares (re-exported by :mod:`variants.base`): the
interface's shapes (:func:`check_qkv`) and the bottom-right causal mask (:func:`causal_mask`)."""

from __future__ import annotations

import torch
from torch import Tensor

from variants.grouped import group_size


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Validate the shapes of q, k, v against the interface; raise ``ValueError`` naming them.

    ``k`` and ``v`` may have fewer heads than ``q`` (``kv_heads`` dividing ``heads``).
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be 4-D (B, H, N, D); got q{tuple(q.shape)} k{tuple(k.shape)} "
            f"v{tuple(v.shape)}"
        )
    if q.shape[0] != k.shape[0] or k.shape[:2] != v.shape[:2]:
        raise ValueError(
            f"batch and heads must match: q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}"
        )
    group_size(q, k)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"head_dim mismatch: q has {q.shape[-1]}, k has {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"kv_len mismatch: k has {k.shape[-2]}, v has {v.shape[-2]}")


def causal_mask(q_len: int, kv_len: int, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``(q_len, kv_len)`` mask, True where query i may attend key j (bottom-right)."""
    offset = kv_len - q_len
    i = torch.arange(q_len, device=device).unsqueeze(1)
    j = torch.arange(kv_len, device=device).unsqueeze(0)
    return j <= i + offset
