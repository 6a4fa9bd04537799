"""The ``structured`` input generator: attention with a real model's statistics, no model.

``structured`` (``bandwidth``, ``shift``, ``gain``, ``sink``, ``temperature``, ``v_mean``,
``fit``; defaults = the values fitted to all-MiniLM-L6-v2, ``conf/inputs/structured.yaml``)
    Attention with the statistics of a real model's (row entropy, mass by query-key distance,
    mass on the first token), without the model. Per (batch, head) the logits are
    ``gain * cos(z_i, z_{j+shift}) + temperature * c_ij + sink * [j == 0]``: ``z`` is a
    stationary AR(1) process over positions (correlation ``exp(-|p - p'| / bandwidth)``, in
    16 dimensions of q and k, ``head_dim // 2`` below 32) so queries attend near the key
    ``shift`` tokens back; ``c_ij`` is a unit-variance random content term (the remaining
    dimensions but one); the last dimension adds ``sink`` to every query's logit of key 0 (an
    attention sink like BERT's [CLS]). A random rotation per (batch, head) mixes the blocks,
    which keeps every logit and leaves no entry zero. ``v`` shares a per-head mean direction:
    ``v = sqrt(v_mean) m + sqrt(1 - v_mean) e`` (real values are not centred). Each parameter
    is a number or a list of per-head-type values (head ``h`` takes element ``h mod len``), so
    one input holds several kinds of head, as a real layer does. ``fit`` is not used to draw:
    it carries the statistics the defaults were fitted to, so every row reports them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from harness.measure.inputs_synthetic import input_number, normal

#: Dimensions of q and k that carry the positional (AR(1)) similarity of ``structured``.
STRUCTURED_POSITION_DIMS = 16


def _per_head(name: str, field: str, value: Any, heads: int, zero_ok: bool = True) -> Tensor:
    """A number or a per-head-type list as one float64 value per head ``(H,)``: head ``h``
    takes element ``h mod len`` (ValueError naming the field for anything else)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ValueError(f"inputs {name}: {field}=[] must hold at least one value")
    numbers = [input_number(name, field, x, zero_ok=zero_ok) for x in values]
    return torch.tensor([numbers[h % len(numbers)] for h in range(heads)], dtype=torch.float64)


def _ar1(gen: torch.Generator, b: int, rho: Tensor, length: int, dims: int) -> Tensor:
    """Stationary AR(1) process ``(B, H, length, dims)`` with unit variance and correlation
    ``rho[h] ** |p - p'|``, computed 64 positions at a time (exact, not a loop per position)."""
    h, block = rho.numel(), 64
    t = torch.arange(block, dtype=torch.float64)
    lag = (t[:, None] - t[None, :]).clamp_min(0)  # (T, T)
    r = rho.view(h, 1, 1)
    # z_t = rho^(t+1) z_prev + sqrt(1 - rho^2) sum_{s <= t} rho^(t - s) e_s within a block
    mix = torch.where(t[:, None] >= t[None, :], r**lag, 0.0) * (1 - r**2).sqrt()  # (H, T, T)
    carry = r.view(h, 1) ** (t + 1)  # (H, T)
    prev = normal(gen, b, h, 1, dims)  # z_{-1} ~ N(0, 1): the process starts stationary
    out = []
    for start in range(0, length, block):
        n = min(block, length - start)
        e = normal(gen, b, h, n, dims)  # (B, H, n, dims)
        z = torch.matmul(mix[:, :n, :n], e) + carry[:, :n, None] * prev  # (B, H, n, dims)
        out.append(z)
        prev = z[:, :, -1:]
    return torch.cat(out, dim=2)


def structured(
    gen: torch.Generator, b: int, h: int, nq: int, nk: int, d: int, **params: Any
) -> tuple[Tensor, Tensor, Tensor]:
    """``q (B, H, Nq, D)``, ``k``, ``v (B, H, Nk, D)`` of the ``structured`` generator."""
    # params["fit"]: the statistics the defaults were fitted to, reported in rows, not used here
    if d < 4:
        raise ValueError(f"inputs structured: head_dim={d} must be >= 4")
    g, t, s, vm, rho, shifts = (
        _per_head("structured", field, params[field], h, zero_ok=field != "bandwidth")
        for field in ("gain", "temperature", "sink", "v_mean", "bandwidth", "shift")
    )
    rho = torch.exp(-1.0 / rho)  # (H,) correlation of neighbouring positions
    if bool((shifts != shifts.round()).any()):
        raise ValueError(f"inputs structured: shift={params['shift']!r} must be whole numbers")
    shifts = [int(x) for x in shifts.tolist()]
    if bool((vm >= 1).any()):
        raise ValueError(f"inputs structured: v_mean={params['v_mean']!r} must be < 1")
    dl = STRUCTURED_POSITION_DIMS if d >= 2 * STRUCTURED_POSITION_DIMS else d // 2
    dc = d - dl - 1
    length = max(nq, nk)
    z = _ar1(gen, b, rho, length + max(shifts), dl)  # (B, H, L + max shift, dl)
    z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # cosines; guard an all-zero row
    # Bottom-right alignment (the suite's causal convention): query i sits at key position
    # i + nk - nq; key j carries the latent of position j + shift, so query p peaks at p - shift.
    zq = z[:, :, length - nq : length]  # (B, H, Nq, dl)
    zk = torch.stack([z[:, i, length - nk + sh : length + sh] for i, sh in enumerate(shifts)], 1)
    cq, ck = normal(gen, b, h, nq, dc), normal(gen, b, h, nk, dc)  # content, (B, H, N, dc)
    key0 = torch.zeros(b, h, nk, 1, dtype=torch.float64)  # the sink coordinate: key 0 only
    key0[:, :, 0] = 1.0
    ones = torch.ones(b, h, nq, 1, dtype=torch.float64)
    hv = (1, h, 1, 1)
    q = torch.cat(
        [g.sqrt().view(hv) * zq, (t.sqrt() / dc**0.25).view(hv) * cq, ones], dim=-1
    )  # (B, H, Nq, D)
    k = torch.cat(
        [g.sqrt().view(hv) * zk, (t.sqrt() / dc**0.25).view(hv) * ck, s.view(hv) * key0], dim=-1
    )  # (B, H, Nk, D)
    # One random rotation per (batch, head): dot products unchanged, no coordinate left zero.
    rot, _ = torch.linalg.qr(normal(gen, b, h, d, d))  # (B, H, D, D)
    scale = d**0.25  # q.k / sqrt(d) = the logits above
    q, k = torch.matmul(q, rot) * scale, torch.matmul(k, rot) * scale
    mean = normal(gen, b, h, 1, d)  # (B, H, 1, D), shared by every key of the head
    v = vm.sqrt().view(hv) * mean + (1 - vm).sqrt().view(hv) * normal(gen, b, h, nk, d)
    return q, k, v
