"""A measurement point: one job's Hydra config, resolved, validated and identified.

:meth:`Point.from_cfg` checks every field before any work and raises :class:`ConfigError` naming
the field (integers and choices through ``variants.base``'s validators), applies ``knob`` to the
variant's own parameters (:func:`variant_params`, the one place it is applied), resolves the
device, and builds the variant once so that a bad variant parameter fails here too. The config's
``seq_len`` becomes ``q_len`` (and ``kv_len`` unless that is set); past this module only
``q_len`` and ``kv_len`` exist.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from harness.analysis.rows import DTYPES, PASSES
from harness.measure.env import resolve_device
from harness.measure.factory import Factory, describe, make_factory
from variants.base import AttentionVariant, VariantConfigError, check_choice, check_int

#: Tasks a point can run; each but ``attention`` reads its own config block of the same name.
TASKS = ("attention", "realmodel", "train", "transfer")
TASK_BLOCKS = ("realmodel", "train", "transfer")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A config value outside its allowed range (the message names the field)."""


def variant_class(cfg: DictConfig) -> type[AttentionVariant]:
    """The class named by ``cfg.variant._target_``, checked to be an AttentionVariant."""
    target = cfg.variant.get("_target_") if isinstance(cfg.get("variant"), DictConfig) else None
    if not target:
        raise ConfigError("variant must be a config group choice with a _target_ (variant=NAME)")
    try:
        cls = get_class(target)
    except Exception as exc:  # any import failure, said in one line
        raise ConfigError(f"variant._target_={target!r} cannot be imported: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, AttentionVariant)):
        raise ConfigError(f"variant._target_={target!r} is not an AttentionVariant")
    return cls


def variant_params(cfg: DictConfig, cls: type[AttentionVariant]) -> dict[str, Any]:
    """The variant's own parameters from the config (no ``_target_``), with ``knob`` applied."""
    params = {
        k: v
        for k, v in OmegaConf.to_container(cfg.variant, resolve=True).items()
        if not k.startswith("_")
    }
    if cfg.get("knob") is not None and cls.knob is not None:
        params[cls.knob] = cfg.knob
    return params


def _int(field: str, value: Any) -> int:
    return check_int(None, field, value, low=1, error=ConfigError)


def _choice(field: str, value: Any, allowed: tuple[str, ...]) -> str:
    return check_choice(None, field, value, allowed, error=ConfigError)


def _measure(cfg: DictConfig) -> dict[str, Any]:
    """The ``measure`` block as a dict; ``reference_max_work`` a positive number or null."""
    measure = OmegaConf.to_container(cfg.measure, resolve=True)
    flush = measure.get("flush_l2", False)
    if not isinstance(flush, bool):
        raise ConfigError(f"measure.flush_l2={flush!r} must be true or false")
    work = measure.get("reference_max_work")
    number = isinstance(work, (int, float)) and not isinstance(work, bool)
    if work is not None and not (number and work > 0):
        raise ConfigError(f"measure.reference_max_work={work!r} must be a number > 0 or null")
    return measure


@dataclasses.dataclass
class Point:
    """Everything that defines one measurement (see the module docstring)."""

    variant_cls: type[AttentionVariant]
    task: str
    variant: str
    params: dict[str, Any]
    batch: int
    heads: int
    q_len: int
    kv_len: int
    head_dim: int
    dtype: str
    device: str
    causal: bool
    inputs: str
    inputs_params: dict[str, Any]
    seed: int
    seeds: list[int]
    passes: list[str]
    measure: dict[str, Any]
    realmodel: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    transfer: dict[str, Any] | None = None

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> Point:
        """Validate ``cfg`` and resolve it into a point; raises :class:`ConfigError`."""
        task = _choice("task", cfg.get("task", "attention"), TASKS)
        q_len, batch, heads, head_dim = (
            _int(f, cfg.get(f)) for f in ("seq_len", "batch", "heads", "head_dim")
        )
        kv_len = q_len if cfg.get("kv_len") is None else _int("kv_len", cfg.kv_len)
        passes = [_choice("passes", p, PASSES) for p in cfg.passes]
        if not passes:
            raise ConfigError(f"passes is empty; choose from {', '.join(PASSES)}")
        if not isinstance(cfg.causal, bool):
            raise ConfigError(f"causal={cfg.causal!r} must be true or false")
        variant_cls = variant_class(cfg)
        inputs_params = OmegaConf.to_container(cfg.inputs, resolve=True)
        inputs = inputs_params.pop("name", None)
        if not inputs:
            raise ConfigError("inputs must be a config group choice with a name (inputs=gaussian)")
        blocks: dict[str, Any] = {}
        if task in TASK_BLOCKS:  # the task's own settings, part of the point (and its id)
            block = cfg.get(task)
            blocks[task] = {} if block is None else OmegaConf.to_container(block, resolve=True)
        point = cls(
            variant_cls=variant_cls,
            task=task,
            variant=variant_cls.name,
            params=variant_params(cfg, variant_cls),
            batch=batch,
            heads=heads,
            q_len=q_len,
            kv_len=kv_len,
            head_dim=head_dim,
            dtype=_choice("dtype", cfg.dtype, DTYPES),
            device=resolve_device(_choice("device", cfg.device, DEVICES)),
            causal=cfg.causal,
            inputs=inputs,
            inputs_params=inputs_params,
            seed=cfg.seed,
            seeds=list(cfg.get("seeds") or [cfg.seed]) if variant_cls.randomized else [cfg.seed],
            passes=passes,
            measure=_measure(cfg),
            **blocks,
        )
        point.check_builds()
        return point

    def factory(self) -> Factory:
        """``factory(seed)`` building this point's variant for its ``kv_len`` and ``head_dim``."""
        return make_factory(self.variant_cls, self.params, self.kv_len, self.head_dim)

    def check_builds(self) -> None:
        """Build the variant once, so that bad parameters fail before any measurement."""
        try:
            self.factory()(self.seed)
        except VariantConfigError as exc:
            raise ConfigError(str(exc)) from exc
        except TypeError as exc:  # a parameter the constructor does not take
            raise ConfigError(f"variant: {exc}") from exc

    def _fields(self) -> dict[str, Any]:
        """The point's data fields: every field but the first, the class object."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)[1:]}

    def as_dict(self) -> dict[str, Any]:
        """The point as the measurement reads it: its fields and the variant's class facts."""
        return self._fields() | describe(self.variant_cls, self.params)

    def point_id(self) -> str:
        """Stable hash of the point's defining fields (the resolved device included).

        The class facts are left out (they follow from the variant), and so is an attention
        point's empty task blocks, so ids stay those of earlier versions of the harness.
        """
        keyed = self._fields()
        for block in TASK_BLOCKS:
            if keyed[block] is None:
                del keyed[block]
        blob = json.dumps(keyed, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
