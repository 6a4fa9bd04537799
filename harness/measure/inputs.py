"""Seeded input generators: the q, k, v a measurement point is run on.

Every generator draws from its own ``torch.Generator`` (never the global RNG), in float64 on the
CPU, and only then casts to the point's dtype and moves to its device, so the same seed gives the
same inputs on every machine and in every dtype (up to the final rounding). Nothing is ever zero.

Generators (``make_inputs(name, ...)``, parameters as keyword arguments):

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
``minilm`` (``layer`` = 4, ``head`` = None, ``text`` = None)
    Real q, k, v captured from all-MiniLM-L6-v2 on English text (``harness.minilm.capture``;
    needs the ``attnbench[real]`` extra). Imported only when used.

In every generator but ``structured`` ``v ~ N(0, 1)`` independently of q and k.

Grouped-query heads (``kv_heads`` < ``heads``): the generator draws q, k and v with ``heads``
heads as without grouping (the same draw), then k and v keep the first head of each group of
``g = heads // kv_heads`` (heads ``0, g, 2g, ...``). Query head ``h`` reads key/value head
``h // g`` (the convention of SDPA's ``enable_gqa`` and of the float64 reference), so query head
``j g``, the group's first, keeps the generator's relation to its keys; the group's other query
heads are the generator's own draws for their heads (on ``gaussian`` inputs every head is
independent anyway).
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from variants.base import check_int

#: Names accepted by :func:`make_inputs`.
INPUT_GENERATORS: list[str] = ["gaussian", "local", "lowrank", "structured", "minilm"]

#: The fitted ``structured`` parameters: one copy, the Hydra config's, read here for defaults.
STRUCTURED_YAML = (
    Path(str(importlib.resources.files("harness.conf"))) / "inputs" / "structured.yaml"
)


def _structured_defaults() -> dict[str, Any]:
    fitted = yaml.safe_load(STRUCTURED_YAML.read_text())
    fitted.pop("name")
    return fitted


#: Allowed parameters of each generator with their defaults.
GENERATOR_PARAMS: dict[str, dict[str, Any]] = {
    "gaussian": {"temperature": 1.0},
    "local": {"bandwidth": 16.0, "temperature": 8.0, "noise": 0.1},
    "lowrank": {"rank": 8, "temperature": 1.0},
    "structured": _structured_defaults(),
    "minilm": {"layer": 4, "head": None, "text": None},  # why 4: conf/inputs/minilm.yaml
}

QKV = tuple[Tensor, Tensor, Tensor]

#: Generators defined outside measure/, by name. ``minilm`` (captured q, k, v of the pretrained
#: model) is registered by ``harness.minilm.capture`` when it is imported: measure/ never
#: imports the real-model code, so the dependency runs one way.
_REGISTERED: dict[str, Callable[..., QKV]] = {}


def register_generator(name: str, generator: Callable[..., QKV]) -> None:
    """Provide the generator ``name`` (one of :data:`INPUT_GENERATORS`) from another package.

    Args:
        name: The generator's name; its parameters are those of :data:`GENERATOR_PARAMS`.
        generator: ``generator(batch, heads, q_len, kv_len, head_dim, dtype, device, seed,
            **params) -> (q, k, v)``.
    """
    if name not in GENERATOR_PARAMS:
        raise ValueError(f"inputs: {name!r} is not one of {', '.join(INPUT_GENERATORS)}")
    _REGISTERED[name] = generator


def _number(name: str, field: str, value: Any, zero_ok: bool = False) -> float:
    """``value`` as a float; raises ValueError unless it is a number > 0 (>= 0 if zero_ok)."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(
            f"inputs {name}: {field}={value!r} must be a number {'>=' if zero_ok else '>'} 0"
        )
    return float(value)


def _normal(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _gaussian(gen: torch.Generator, b: int, h: int, nq: int, nk: int, d: int, temperature: float):
    t = _number("gaussian", "temperature", temperature)
    q = _normal(gen, b, h, nq, d) * math.sqrt(t)  # (B, H, Nq, D)
    k = _normal(gen, b, h, nk, d) * math.sqrt(t)  # (B, H, Nk, D)
    return q, k


def _local(
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
    bw = _number("local", "bandwidth", bandwidth)
    t = _number("local", "temperature", temperature)
    noise = _number("local", "noise", noise, zero_ok=True)
    # Random Fourier features of a Gaussian kernel over positions, one draw per (batch, head).
    freqs = _normal(gen, b, h, 1, d) / bw  # (B, H, 1, D)
    phases = torch.rand(b, h, 1, d, generator=gen, dtype=torch.float64) * (2 * math.pi)
    length = max(nq, nk)
    pos = torch.arange(length, dtype=torch.float64).view(1, 1, length, 1)
    field = torch.cos(pos * freqs + phases)  # (B, H, L, D)
    # Bottom-right alignment: the last query sits at the last key's position.
    q_field, k_field = field[:, :, length - nq :], field[:, :, length - nk :]
    # E|f|^2 = d/2, so noise is scaled to the field's per-coordinate size sqrt(1/2).
    q = q_field + noise * math.sqrt(0.5) * _normal(gen, b, h, nq, d)
    k = k_field + noise * math.sqrt(0.5) * _normal(gen, b, h, nk, d)
    # Cosines stay bounded in [-1, 1]; 1e-12 only guards a theoretical all-zero row.
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    gain = math.sqrt(t) * d**0.25  # q.k / sqrt(d) = t * cos(q, k)
    return q * gain, k * gain


def _lowrank(
    gen: torch.Generator, b: int, h: int, nq: int, nk: int, d: int, rank: int, temperature: float
):
    check_int("inputs lowrank", "rank", rank, low=1, high=d, error=ValueError)  # high: head_dim
    t = _number("lowrank", "temperature", temperature)
    basis = _normal(gen, b, h, rank, d) / math.sqrt(rank)  # (B, H, r, D), unit-variance products
    q = torch.matmul(_normal(gen, b, h, nq, rank), basis) * math.sqrt(t)  # (B, H, Nq, D)
    k = torch.matmul(_normal(gen, b, h, nk, rank), basis) * math.sqrt(t)  # (B, H, Nk, D)
    return q, k


#: Dimensions of q and k that carry the positional (AR(1)) similarity of ``structured``.
STRUCTURED_POSITION_DIMS = 16


def _per_head(name: str, field: str, value: Any, heads: int, zero_ok: bool = True) -> Tensor:
    """A number or a per-head-type list as one float64 value per head ``(H,)``: head ``h``
    takes element ``h mod len`` (ValueError naming the field for anything else)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ValueError(f"inputs {name}: {field}=[] must hold at least one value")
    numbers = [_number(name, field, x, zero_ok=zero_ok) for x in values]
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
    prev = _normal(gen, b, h, 1, dims)  # z_{-1} ~ N(0, 1): the process starts stationary
    out = []
    for start in range(0, length, block):
        n = min(block, length - start)
        e = _normal(gen, b, h, n, dims)  # (B, H, n, dims)
        z = torch.matmul(mix[:, :n, :n], e) + carry[:, :n, None] * prev  # (B, H, n, dims)
        out.append(z)
        prev = z[:, :, -1:]
    return torch.cat(out, dim=2)


def _structured(
    gen: torch.Generator, b: int, h: int, nq: int, nk: int, d: int, **params: Any
) -> tuple[Tensor, Tensor, Tensor]:
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
    cq, ck = _normal(gen, b, h, nq, dc), _normal(gen, b, h, nk, dc)  # content, (B, H, N, dc)
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
    rot, _ = torch.linalg.qr(_normal(gen, b, h, d, d))  # (B, H, D, D)
    scale = d**0.25  # q.k / sqrt(d) = the logits above
    q, k = torch.matmul(q, rot) * scale, torch.matmul(k, rot) * scale
    mean = _normal(gen, b, h, 1, d)  # (B, H, 1, D), shared by every key of the head
    v = vm.sqrt().view(hv) * mean + (1 - vm).sqrt().view(hv) * _normal(gen, b, h, nk, d)
    return q, k, v


_SYNTHETIC: dict[str, Callable[..., tuple[Tensor, ...]]] = {
    "gaussian": _gaussian,
    "local": _local,
    "lowrank": _lowrank,
    "structured": _structured,
}


def check_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Validate a generator name and parameter names; return the parameters with defaults.

    Raises:
        ValueError: naming the unknown generator or parameter and the allowed values.
    """
    if name not in GENERATOR_PARAMS:
        raise ValueError(
            f"inputs: unknown generator {name!r}; allowed: {', '.join(INPUT_GENERATORS)}"
        )
    allowed = GENERATOR_PARAMS[name]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"inputs {name}: unknown parameter {unknown[0]!r}; allowed: "
            f"{', '.join(allowed) or '(none)'}"
        )
    return {**allowed, **params}


def make_inputs(
    name: str,
    batch: int,
    heads: int,
    q_len: int,
    kv_len: int,
    head_dim: int,
    dtype: torch.dtype | str,
    device: torch.device | str,
    seed: int,
    kv_heads: int | None = None,
    **params: Any,
) -> QKV:
    """Seeded ``q (B, H, Nq, D)``, ``k (B, Hkv, Nk, D)``, ``v (B, Hkv, Nk, D)`` from a generator.

    Args:
        name: One of :data:`INPUT_GENERATORS`.
        batch: Batch size B.
        heads: Number of heads H.
        q_len: Query length Nq.
        kv_len: Key/value length Nk.
        head_dim: Head dimension D (of q, k and v).
        dtype: Output dtype (``torch.float32`` or its name, ``"float32"``).
        device: Output device.
        seed: Seed of the generator's own ``torch.Generator``.
        kv_heads: Key/value heads ``Hkv`` (must divide ``heads``; see the module docstring);
            None = ``heads``.
        **params: The generator's parameters (see the module docstring).

    Returns:
        ``(q, k, v)`` in ``dtype`` on ``device``, not requiring grad.

    Raises:
        ValueError: for an unknown generator or parameter, or a parameter out of range.
    """
    full = check_params(name, params)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    group = _group(name, heads, kv_heads)
    if name not in _SYNTHETIC:
        generator = _REGISTERED.get(name)
        if generator is None:
            raise ValueError(
                f"inputs: {name!r} is provided by another package that registers it with "
                "register_generator (minilm: import harness.minilm.capture, which needs "
                "attnbench[real]; the app does this for you)"
            )
        q, k, v = generator(batch, heads, q_len, kv_len, head_dim, dtype, device, seed, **full)
        return q, *(t[:, ::group].contiguous() for t in (k, v))  # type: ignore[return-value]
    shape = {
        "batch": batch,
        "heads": heads,
        "q_len": q_len,
        "kv_len": kv_len,
        "head_dim": head_dim,
    }
    for field, value in shape.items():
        check_int(f"inputs {name}", field, value, low=1, error=ValueError)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    drawn = _SYNTHETIC[name](gen, batch, heads, q_len, kv_len, head_dim, **full)
    # v ~ N(0, 1) unless the generator draws its own (structured: values with a shared mean)
    q, k, v = drawn if len(drawn) == 3 else (*drawn, _normal(gen, batch, heads, kv_len, head_dim))
    k, v = k[:, ::group], v[:, ::group]  # the first head of each group (module docstring)
    return tuple(t.to(dtype=dtype).to(device).contiguous() for t in (q, k, v))  # type: ignore[return-value]


def _group(name: str, heads: int, kv_heads: int | None) -> int:
    """Query heads per key/value head; ValueError unless ``kv_heads`` divides ``heads``."""
    if kv_heads is None:
        return 1
    check_int(f"inputs {name}", "kv_heads", kv_heads, low=1, error=ValueError)
    if not isinstance(heads, int) or heads % kv_heads:
        raise ValueError(f"inputs {name}: kv_heads={kv_heads} must divide heads={heads}")
    return heads // kv_heads
