"""The speed check's targets: which variants the table shows and the speed-ups they must reach.

They are read from a YAML file (default ``conf/speedcheck.yaml``, shipped as
``harness.conf``) against the schema below: OmegaConf rejects an unknown key or a value of the
wrong type, and :func:`load_targets` checks the ranges; every error is one line naming the file
and the field.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import variants

#: The passes of the table (timing pass, causal, row label), in the table's order.
PASSES: list[tuple[str, bool, str]] = [
    ("fwd", False, "forward, bidirectional"),
    ("fwd", True, "forward, causal"),
    ("fwd_bwd", False, "forward+backward, bidirectional"),
    ("fwd_bwd", True, "forward+backward, causal"),
]


class TargetsError(ValueError):
    """A targets file that cannot be used; the message is one line naming the field."""


@dataclasses.dataclass
class Masking:
    """Minimum speed-up over sdpa per masking; None: measured, no verdict."""

    bidirectional: float | None = None
    causal: float | None = None


@dataclasses.dataclass
class PassTargets:
    """Minimum speed-up per pass (``fwd``, ``fwd_bwd``) and masking."""

    fwd: Masking = dataclasses.field(default_factory=Masking)
    fwd_bwd: Masking = dataclasses.field(default_factory=Masking)


@dataclasses.dataclass
class SpeedVariant:
    """One column of the speed table: a registered variant, its parameters and its targets."""

    variant: str = MISSING
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    label: str | None = None  # default: the variant and its parameters
    min_speedup: PassTargets = dataclasses.field(default_factory=PassTargets)

    def target(self, pass_name: str, causal: bool) -> float | None:
        """The minimum speed-up in ``pass_name`` with this masking, or None."""
        return getattr(
            getattr(self.min_speedup, pass_name), "causal" if causal else "bidirectional"
        )


@dataclasses.dataclass
class MemoryVariant:
    """A variant whose forward's peak memory is measured at every length."""

    variant: str = MISSING
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class MemoryTargets:
    """Lengths, the largest log-log slope of the peaks that passes, and the variants."""

    lengths: list[int] = MISSING
    max_slope: float = MISSING
    variants: list[MemoryVariant] = MISSING


@dataclasses.dataclass
class Targets:
    """A whole targets file; ``source`` is the file it was read from."""

    speed: list[SpeedVariant] = MISSING
    memory: MemoryTargets | None = None
    source: str = ""


def default_path() -> Path:
    """``conf/speedcheck.yaml`` (installed as ``harness.conf``)."""
    return Path(str(importlib.resources.files("harness.conf"))) / "speedcheck.yaml"


@dataclasses.dataclass
class TargetsFile:
    """The file's top level; list items are typed one by one so that errors name their index."""

    speed: list[Any] = MISSING
    memory: Any = None


def load_targets(path: str | Path | None = None) -> Targets:
    """The targets in ``path`` (default :func:`default_path`), checked.

    Raises:
        TargetsError: The file is missing or unreadable, or a key, type or value is wrong.
    """
    path = Path(path) if path is not None else default_path()

    def typed(schema: type, node: Any, where: str) -> Any:
        try:
            return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
        except OmegaConfBaseException as exc:
            key = ".".join(k for k in (where, str(getattr(exc, "full_key", "") or "")) if k)
            message = str(getattr(exc, "msg", exc)).splitlines()[0]
            raise TargetsError(f"{path}: {key + ': ' if key else ''}{message}") from exc

    try:
        raw = OmegaConf.load(path)
    except FileNotFoundError as exc:
        raise TargetsError(f"targets file {path} not found") from exc
    except Exception as exc:  # YAML syntax
        raise TargetsError(f"{path}: {' '.join(str(exc).split())}") from exc
    top = typed(TargetsFile, raw, "")
    speed = [typed(SpeedVariant, item, f"speed[{i}]") for i, item in enumerate(top.speed)]
    memory = None
    if top.memory is not None:
        items = top.memory.get("variants") if isinstance(top.memory, dict) else None
        if not isinstance(items, list):
            raise TargetsError(f"{path}: memory.variants: a list of variants is required")
        memory = typed(MemoryTargets, {**top.memory, "variants": []}, "memory")
        memory.variants = [
            typed(MemoryVariant, item, f"memory.variants[{i}]") for i, item in enumerate(items)
        ]
    targets = Targets(speed=speed, memory=memory, source=str(path))
    _check(targets, path)
    return targets


def _check(targets: Targets, path: Path) -> None:
    """Range checks the schema cannot express."""

    def fail(field: str, problem: str) -> None:
        raise TargetsError(f"{path}: {field}: {problem}")

    if not targets.speed:
        fail("speed", "lists no variant")
    known = set(variants.available())
    for i, entry in enumerate(targets.speed):
        if entry.variant not in known:
            fail(f"speed[{i}].variant", f"unknown variant {entry.variant!r}")
        for pass_name, causal, _ in PASSES:
            target = entry.target(pass_name, causal)
            if target is not None and not target > 0:
                masking = "causal" if causal else "bidirectional"
                fail(f"speed[{i}].min_speedup.{pass_name}.{masking}", f"{target} is not > 0")
        entry.label = entry.label or label_of(entry.variant, entry.params)
    labels = [entry.label for entry in targets.speed]
    if len(set(labels)) < len(labels) or "sdpa" in labels:
        fail("speed", f"labels must be distinct and not 'sdpa': {labels}")
    memory = targets.memory
    if memory is None:
        return
    if len(set(memory.lengths)) < 2 or min(memory.lengths) < 1:
        fail("memory.lengths", f"{memory.lengths}: needs two distinct positive lengths")
    if not memory.max_slope > 0:
        fail("memory.max_slope", f"{memory.max_slope} is not > 0")
    for i, entry in enumerate(memory.variants):
        if entry.variant not in known:
            fail(f"memory.variants[{i}].variant", f"unknown variant {entry.variant!r}")


def label_of(name: str, params: dict[str, Any]) -> str:
    """``performer nb_features=256``: the variant and its parameters."""
    return " ".join([name, *(f"{key}={value}" for key, value in params.items())])
