"""The closed-form input generators ``gaussian``, ``local`` and ``lowrank`` (q and k; v is drawn
by :func:`harness.measure.inputs.make_inputs`), and the helpers every generator shares.

``gaussian`` (``temperature`` = 1.0)
    ``q0, k0, v ~ N(0, 1)`` i.i.d.; ``q = sqrt(t) q0`` and ``k = sqrt(t) k0``, so the logits are
    exactly ``t * q0.k0 / sqrt(d)`` with standard deviation ``t``. Small ``t`` gives nearly
    uniform attention (high entropy), large ``t`` sharply peaked attention. q and k are scaled
    alike (rather than q alone) so kernel methods whose error depends on ``|q|`` and ``|k|``
    (Performer) see balanced norms.
``local`` (``bandwidth`` = 16.0, ``temperature`` = 8.0, ``noise`` = 0.1)
    A smooth random field ``f(p)`` over positions ``p`` with unit-norm rows and
    ``f(p).f(p') ~= exp(-(p - p')^2 / (2 bandwidth^2))`` (random Fourier features of a Gaussian
    kernel: ``f(p)_m = cos(w_m p + b_m)``, ``w_m ~ N(0, 1/bandwidth^2)``, ``b_m ~ U[0, 2pi)``).
    Keys at positions ``0..Nk-1`` and queries at the bottom-right aligned positions
    ``Nk-Nq..Nk-1`` (the suite's causal convention) take ``f`` plus ``noise`` times independent
    Gaussian noise, renormalised to unit rows and scaled by ``sqrt(t) d^(1/4)``, so the logits are
    ``t`` times the cosine of the two rows: attention concentrates within about ``bandwidth``
    positions of the diagonal, more sharply for larger ``t``.
``lowrank`` (``rank`` = 8, ``temperature`` = 1.0)
    ``q = sqrt(t) A U`` and ``k = sqrt(t) C U`` with ``A, C ~ N(0, 1)`` of shape ``(N, rank)`` and
    one shared basis ``U ~ N(0, 1/rank)`` of shape ``(rank, d)`` per head, so q and k (and the
    logit matrix) have rank ``rank`` and unit-variance entries; the logits have standard
    deviation about ``t``. ``v ~ N(0, 1)`` is full rank.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from variants.base import check_int


def input_number(name: str, field: str, value: Any, zero_ok: bool = False) -> float:
    """``value`` as a float; raises ValueError unless it is a number > 0 (>= 0 if zero_ok)."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(
            f"inputs {name}: {field}={value!r} must be a number {'>=' if zero_ok else '>'} 0"
        )
    return float(value)


def normal(gen: torch.Generator, *shape: int) -> Tensor:
    """Standard normal float64 draws of ``shape`` from ``gen``."""
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def gaussian(gen: torch.Generator, b: int, h: int, nq: int, nk: int, d: int, temperature: float):
    """``q (B, H, Nq, D)``, ``k (B, H, Nk, D)`` of the ``gaussian`` generator."""
    t = input_number("gaussian", "temperature", temperature)
    q = normal(gen, b, h, nq, d) * math.sqrt(t)  # (B, H, Nq, D)
    k = normal(gen, b, h, nk, d) * math.sqrt(t)  # (B, H, Nk, D)
    return q, k


def local(
    gen: torch.Generator,
    b: int,
    h: int,
    nq: int,
    nk: int,
    d: int,
    bandwidth: float,
    temperature: float,
    noise: float,
):
    """``q (B, H, Nq, D)``, ``k (B, H, Nk, D)`` of the ``local`` generator."""
    bw = input_number("local", "bandwidth", bandwidth)
    t = input_number("local", "temperature", temperature)
    noise = input_number("local", "noise", noise, zero_ok=True)
    # Random Fourier features of a Gaussian kernel over positions, one draw per (batch, head).
    freqs = normal(gen, b, h, 1, d) / bw  # (B, H, 1, D)
    phases = torch.rand(b, h, 1, d, generator=gen, dtype=torch.float64) * (2 * math.pi)
    length = max(nq, nk)
    pos = torch.arange(length, dtype=torch.float64).view(1, 1, length, 1)
    field = torch.cos(pos * freqs + phases)  # (B, H, L, D)
    # Bottom-right alignment: the last query sits at the last key's position.
    q_field, k_field = field[:, :, length - nq :], field[:, :, length - nk :]
    # E|f|^2 = d/2, so noise is scaled to the field's per-coordinate size sqrt(1/2).
    q = q_field + noise * math.sqrt(0.5) * normal(gen, b, h, nq, d)
    k = k_field + noise * math.sqrt(0.5) * normal(gen, b, h, nk, d)
    # Cosines stay bounded in [-1, 1]; 1e-12 only guards a theoretical all-zero row.
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    gain = math.sqrt(t) * d**0.25  # q.k / sqrt(d) = t * cos(q, k)
    return q * gain, k * gain


def lowrank(
    gen: torch.Generator, b: int, h: int, nq: int, nk: int, d: int, rank: int, temperature: float
):
    """``q (B, H, Nq, D)``, ``k (B, H, Nk, D)`` of the ``lowrank`` generator."""
    check_int("inputs lowrank", "rank", rank, low=1, high=d, error=ValueError)  # high: head_dim
    t = input_number("lowrank", "temperature", temperature)
    basis = normal(gen, b, h, rank, d) / math.sqrt(rank)  # (B, H, r, D), unit-variance products
    q = torch.matmul(normal(gen, b, h, nq, rank), basis) * math.sqrt(t)  # (B, H, Nq, D)
    k = torch.matmul(normal(gen, b, h, nk, rank), basis) * math.sqrt(t)  # (B, H, Nk, D)
    return q, k
