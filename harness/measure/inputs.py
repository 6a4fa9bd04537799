"""Seeded input generators: the q, k, v a measurement point is run on.

Every generator draws from its own ``torch.Generator`` (never the global RNG), in float64 on the
CPU, and only then casts to the point's dtype and moves to its device, so the same seed gives the
same inputs on every machine and in every dtype (up to the final rounding). Nothing is ever zero.

Generators (``make_inputs(name, ...)``, parameters as keyword arguments, defaults in
:data:`GENERATOR_PARAMS`): ``gaussian``, ``local`` and ``lowrank``
(:mod:`harness.measure.inputs_synthetic`), ``structured``, with a real model's attention
statistics (:mod:`harness.measure.inputs_structured`), and ``minilm``: real q, k, v captured
from all-MiniLM-L6-v2 on English text (``harness.minilm.capture``; needs the ``attnbench[real]``
extra), imported only when used. In every generator but ``structured`` ``v ~ N(0, 1)``
independently of q and k.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from harness.measure.inputs_structured import structured
from harness.measure.inputs_synthetic import gaussian, local, lowrank, normal
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


_SYNTHETIC: dict[str, Callable[..., tuple[Tensor, ...]]] = {
    "gaussian": gaussian,
    "local": local,
    "lowrank": lowrank,
    "structured": structured,
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
        **params: The generator's parameters (:data:`GENERATOR_PARAMS`; their meaning: the
            generator's module).

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
    q, k, v = drawn if len(drawn) == 3 else (*drawn, normal(gen, batch, heads, kv_len, head_dim))
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
