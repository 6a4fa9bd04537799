"""Plain-PyTorch references of :mod:`variants.engines.prefix`: normalised kernel attention as
its masked quadratic form (``O(Nq * Nk)``) and, causal, as cumulative sums over the keys
(``O(Nk * m * Dv)`` memory).

Differentiable and in the inputs' dtype; causal attention is bottom-right aligned.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from variants.engines.blocksparse_naive import bottom_right_causal


def quadratic_form(phi_q: Tensor, phi_k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
    """``(phi_q phi_k^T, masked) v`` over its row sums, from features ``(B, H, N, m)``."""
    weights = phi_q @ phi_k.transpose(-2, -1)  # (B, H, Nq, Nk)
    if causal:
        weights = weights * bottom_right_causal(phi_q.shape[-2], phi_k.shape[-2], phi_q.device)
    return (weights @ v) / weights.sum(-1, keepdim=True)


def cumsum_form(phi_q: Tensor, phi_k: Tensor, v: Tensor) -> Tensor:
    """Causal kernel attention by running sums: query ``i`` reads ``S = sum_{j <= p} phi_k_j
    v_j^T`` and ``z = sum_{j <= p} phi_k_j`` at its position ``p = i + Nk - Nq``."""
    off = phi_k.shape[-2] - phi_q.shape[-2]
    states = torch.cumsum(phi_k.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)  # (B, H, Nk, m, Dv)
    sums = torch.cumsum(phi_k, dim=-2)  # (B, H, Nk, m)
    num = torch.einsum("bhnm,bhnmd->bhnd", phi_q, states[:, :, off:])  # (B, H, Nq, Dv)
    return num / (phi_q * sums[:, :, off:]).sum(-1, keepdim=True)


def causal_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, maps, params: Sequence[Tensor] = ()
) -> Tensor:
    """What :func:`variants.engines.prefix.causal_linear_attention` computes, from the same
    feature maps (a ``FeatureMaps``). Key logits (``maps.key_is_log``) are shifted by one max
    per head (detached) before ``exp``; the shift cancels in the output, as the engine's running
    max does."""
    phi_k = maps.key(k, *params)
    if maps.key_is_log:
        phi_k = (phi_k - phi_k.detach().amax(dim=(-2, -1), keepdim=True)).exp()
    return quadratic_form(maps.query(q, *params), phi_k, v, causal=True)
