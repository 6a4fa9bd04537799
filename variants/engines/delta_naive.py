"""Plain-PyTorch reference of :mod:`variants.engines.delta`: the (gated) delta rule as its
recurrence, one token at a time.

Differentiable and in the inputs' dtype (float64 in the tests).
"""

from __future__ import annotations

import torch
from torch import Tensor


def delta_rule(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor,
    log_alpha: Tensor | None = None, state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``S_t = alpha_t (S_{t-1} - beta_t k_t^T (k_t S_{t-1})) + beta_t k_t^T v_t`` from
    ``S_{-1} = state`` (zeros if None; ``alpha_t = exp(log_alpha_t)``, 1 if None), read after
    the write, ``o_t = q_t S_t``: ``(B, H, N, Dv)`` and the last ``(B, H, D, Dv)``."""
    b, h, n, d = q.shape
    s = q.new_zeros(b, h, d, v.shape[-1]) if state is None else state
    outs = []
    for t in range(n):
        k_t = k[:, :, t, :, None]  # (B, H, D, 1) column
        beta_t = beta[:, :, t, None, None]
        erased = s - beta_t * k_t * (k_t.transpose(-2, -1) @ s)  # (I - beta k k^T) S
        if log_alpha is not None:
            erased = log_alpha[:, :, t, None, None].exp() * erased
        s = erased + beta_t * k_t * v[:, :, t, None, :]  # (B, H, D, Dv)
        outs.append((q[:, :, t, None, :] @ s).squeeze(-2))  # (B, H, Dv)
    return torch.stack(outs, dim=-2), s
