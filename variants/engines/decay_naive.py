"""Plain-PyTorch reference of :mod:`variants.engines.decay`: retention without normalisation as
its recurrence, one token at a time.

Differentiable and in the inputs' dtype (float64 in the tests).
"""

from __future__ import annotations

import torch
from torch import Tensor


def decay_attention(
    q: Tensor, k: Tensor, v: Tensor, log_gamma: Tensor,
    state: Tensor | None = None, offset: int = 0,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``S_n = gamma S_{n-1} + k_n^T v_n`` from ``S_{-1} = state`` (zeros if None), read after
    the write, ``o_n = q_n S_n``: ``(B, H, N, Dv)`` and the last ``(B, H, D, Dv)``.
    ``offset`` is ignored, as by the engine."""
    b, h, n, d = q.shape
    gamma = log_gamma.exp()[:, None, None]  # (H, 1, 1)
    s = q.new_zeros(b, h, d, v.shape[-1]) if state is None else state
    outs = []
    for t in range(n):
        s = gamma * s + k[:, :, t, :, None] * v[:, :, t, None, :]  # (B, H, D, Dv)
        outs.append((q[:, :, t, None, :] @ s).squeeze(-2))  # (B, H, Dv)
    return torch.stack(outs, dim=-2), s


def decay_key_sum(
    k: Tensor, log_gamma: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``z_n = gamma z_{n-1} + k_n`` from ``z_{-1} = state`` (zeros if None): ``(B, H, N, D)``
    and the last ``(B, H, D)``."""
    gamma = log_gamma.exp()[:, None]  # (H, 1)
    z = k.new_zeros(k.shape[0], k.shape[1], k.shape[3]) if state is None else state
    sums = []
    for t in range(k.shape[2]):
        z = gamma * z + k[:, :, t]
        sums.append(z)
    return torch.stack(sums, dim=-2), z
