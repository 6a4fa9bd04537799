"""How far a variant's effective attention matrix is from exact softmax attention, row by row.

``P`` is the exact matrix (each row a probability distribution) and ``A`` the matrix the variant
applies to V (:func:`harness.measure.accuracy.effective_attention`). A sparse variant's ``A``
holds exact zeros where ``P`` has mass; Linformer's and Nystrom's rows can hold negative entries
and need not sum to one. So no single divergence describes every variant, and none of the
figures below takes a logarithm of zero or uses a floor (a clamp floor once decided the old
``attn_kl``: a zero costs ``log(p / floor)``). All are means over rows (heads and queries), in
nats where a logarithm appears:

* ``attn_tv``: total variation ``0.5 * sum_j |P_ij - A_ij|`` on the raw rows (the headline).
* ``attn_missing_mass``: ``sum_j P_ij`` over the keys where ``A_ij == 0`` exactly: the exact
  attention the variant drops (outside a sliding window, for example).
* ``attn_kl_support``: ``KL(P_S || A_S)`` on the variant's support ``S = {j: A_ij > 0}``, both
  restricted to ``S`` and renormalised there; a row whose exact mass on ``S`` is zero has no
  such KL and is left out of the mean (the column is null when every row is).
* ``attn_js``: Jensen-Shannon divergence between ``P`` and ``Q = max(A, 0)`` renormalised, with
  ``M = (P + Q) / 2``: bounded by ``ln 2``. A row with no positive weight is at the bound.
* ``attn_row_sum_err``: ``|sum_j A_ij - 1|`` (0 for any variant whose rows are distributions).
* ``attn_negative_mass``: ``sum_j max(-A_ij, 0)``, the magnitude of the negative weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _xlogy_ratio(x: Tensor, y: Tensor) -> Tensor:
    """``x * log(x / y)`` where ``x > 0``, else 0 (``y > 0`` wherever ``x > 0``)."""
    safe_x = torch.where(x > 0, x, torch.ones_like(x))
    safe_y = torch.where(x > 0, y, torch.ones_like(y))
    return torch.where(x > 0, x * (torch.log(safe_x) - torch.log(safe_y)), torch.zeros_like(x))


def kl_on_support(p: Tensor, a: Tensor) -> Tensor:
    """Per-row ``KL(P_S || A_S)`` on ``S = {A > 0}`` (NaN where ``P`` has no mass on ``S``)."""
    support = a > 0
    p_s = torch.where(support, p, torch.zeros_like(p))
    a_s = torch.where(support, a, torch.zeros_like(a))
    mass = p_s.sum(-1, keepdim=True)
    a_total = a_s.sum(-1, keepdim=True)
    p_n = p_s / torch.where(mass > 0, mass, torch.ones_like(mass))
    a_n = a_s / torch.where(a_total > 0, a_total, torch.ones_like(a_total))
    kl = _xlogy_ratio(p_n, a_n).sum(-1)
    return torch.where(mass.squeeze(-1) > 0, kl, torch.full_like(kl, math.nan))


def jensen_shannon(p: Tensor, a: Tensor) -> Tensor:
    """Per-row JS divergence between ``P`` and ``max(A, 0)`` renormalised (``ln 2`` if none)."""
    pos = a.clamp_min(0)
    total = pos.sum(-1, keepdim=True)
    q = pos / torch.where(total > 0, total, torch.ones_like(total))
    m = 0.5 * (p + q)
    js = 0.5 * _xlogy_ratio(p, m).sum(-1) + 0.5 * _xlogy_ratio(q, m).sum(-1)
    return torch.where(total.squeeze(-1) > 0, js, torch.full_like(js, math.log(2.0)))


def attention_divergence(exact: Tensor, approx: Tensor) -> dict[str, float | None]:
    """Mean row-wise divergences of ``approx`` from ``exact`` (module docstring).

    Args:
        exact: ``(..., Nq, Nk)`` exact attention probabilities.
        approx: ``(..., Nq, Nk)`` the variant's effective attention matrix.

    Returns:
        The six ``attn_*`` columns of the module docstring; ``attn_kl_support`` is ``None`` when
        no row has exact mass on the variant's support.
    """
    p, a = exact.double(), approx.double()
    kl = kl_on_support(p, a)
    defined = ~torch.isnan(kl)
    return {
        "attn_tv": (0.5 * (p - a).abs().sum(-1)).mean().item(),
        "attn_js": jensen_shannon(p, a).mean().item(),
        "attn_kl_support": kl[defined].mean().item() if bool(defined.any()) else None,
        "attn_missing_mass": torch.where(a == 0, p, torch.zeros_like(p)).sum(-1).mean().item(),
        "attn_row_sum_err": (a.sum(-1) - 1).abs().mean().item(),
        "attn_negative_mass": (-a).clamp_min(0).sum(-1).mean().item(),
    }
