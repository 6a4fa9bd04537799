"""A measurement point: one job's Hydra config, resolved, validated and identified.

:meth:`Point.from_cfg` checks every field before any work and raises :class:`ConfigError` naming
the field; types and unknown keys were already checked by Hydra against the schema
(:mod:`harness.app.config`). It turns the ``measure`` block and the task's own block into their
dataclasses (whose ``__post_init__`` checks ranges), applies ``knob`` to the variant's own
parameters (:func:`variant_params`, the one place it is applied), resolves the device, and builds
the variant once so that a bad variant parameter fails here too. The config's ``seq_len`` becomes
``q_len`` (and ``kv_len`` unless that is set); past this module only ``q_len`` and ``kv_len``
exist. ``kv_heads`` (grouped-query attention: k and v have that many heads, each shared by
``heads // kv_heads`` query heads) is resolved to ``heads`` when unset and must divide it. A
task's config block may check itself against the whole point: its ``check_point(point)``
method, when it has one, runs here and raises :class:`ConfigError` (the decode task's prompt
against its cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from harness import tasks
from harness.analysis.rows import DTYPES, PASSES
from harness.measure.config import ConfigError, MeasureConfig
from harness.measure.env import resolve_device
from harness.measure.factory import Factory, describe, make_factory
from variants.base import AttentionVariant, VariantConfigError, check_choice, check_int

__all__ = ["DEVICES", "ConfigError", "Point", "variant_class", "variant_params"]

DEVICES = ("auto", "cpu", "cuda")


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
    return check_choice(None, field, value, tuple(allowed), error=ConfigError)


def _unknown_keys(node: Any, cls: type, prefix: str) -> list[str]:
    """Keys of ``node`` that are not fields of the dataclass ``cls`` (nested blocks too)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = []
    for key in node:
        if key not in fields:
            out.append(f"{prefix}.{key}")
            continue
        sub = fields[key].default_factory  # a nested block (e.g. train.mqar)
        if dataclasses.is_dataclass(sub) and isinstance(node[key], DictConfig):
            out += _unknown_keys(node[key], sub, f"{prefix}.{key}")
    return out


def _block(cfg: DictConfig, name: str, cls: type) -> Any:
    """``cfg.<name>`` as an instance of its dataclass ``cls`` (ranges checked by the class)."""
    node = cfg.get(name)
    if node is None:
        return cls()
    unknown = sorted(_unknown_keys(node, cls, name))
    if unknown:  # added with "+", which Hydra allows even into a typed block
        raise ConfigError(f"{', '.join(unknown)}: unknown key(s); see `attnbench --cfg job`")
    if OmegaConf.get_type(node) is cls:
        return OmegaConf.to_object(node)
    return cls(**OmegaConf.to_container(node, resolve=True))  # a config composed without schema


@dataclasses.dataclass
class Point:
    """Everything that defines one measurement (see the module docstring).

    ``task_cfg`` is the task's own config block (its dataclass instance; None for a task
    without one); ``measure`` the ``measure`` block.
    """

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
    measure: MeasureConfig
    task_cfg: Any = None
    kv_heads: int | None = None  # None: resolved to heads

    def __post_init__(self) -> None:
        if self.kv_heads is None:
            self.kv_heads = self.heads

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> Point:
        """Validate ``cfg`` and resolve it into a point; raises :class:`ConfigError`."""
        task = _choice("task", cfg.get("task", "attention"), tuple(tasks.names()))
        q_len, batch, heads, head_dim = (
            _int(f, cfg.get(f)) for f in ("seq_len", "batch", "heads", "head_dim")
        )
        kv_len = q_len if cfg.get("kv_len") is None else _int("kv_len", cfg.kv_len)
        kv_heads = heads if cfg.get("kv_heads") is None else _int("kv_heads", cfg.kv_heads)
        if heads % kv_heads:
            raise ConfigError(f"kv_heads={kv_heads} must divide heads={heads}")
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
        try:
            measure = _block(cfg, "measure", MeasureConfig)
            config_cls = tasks.get(task).config_class()
            task_cfg = None if config_cls is None else _block(cfg, task, config_cls)
        except TypeError as exc:  # a key the block's class does not take (no schema)
            raise ConfigError(f"{task}: {exc}") from exc
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
            measure=measure,
            task_cfg=task_cfg,
            kv_heads=kv_heads,
        )
        check_point = getattr(task_cfg, "check_point", None)
        if callable(check_point):
            check_point(point)
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

    def facts(self) -> dict[str, Any]:
        """The variant's class facts as row columns (``exact``, ``randomized``, ``knob``, ...)."""
        return describe(self.variant_cls, self.params)

    def point_id(self) -> str:
        """Stable hash of the point's defining fields (the resolved device included).

        The task's block is keyed by the task's name; a task without a block adds nothing.
        ``kv_heads`` enters only where it differs from ``heads``, so the ids of points without
        grouped heads are those they had before the field existed (resume keeps working).
        """
        keyed: dict[str, Any] = {}
        for f in dataclasses.fields(self)[1:]:
            value = getattr(self, f.name)
            if f.name == "kv_heads" and value == self.heads:
                continue
            if dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            if f.name == "task_cfg":
                if value is not None:
                    keyed[self.task] = value
                continue
            keyed[f.name] = value
        blob = json.dumps(keyed, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def as_dict(self) -> dict[str, Any]:
        """The point as a plain dict with the class facts (rows, Ray plans, older readers)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)[1:]}
        out["measure"] = dataclasses.asdict(self.measure)
        task_cfg = out.pop("task_cfg")
        if task_cfg is not None:
            out[self.task] = dataclasses.asdict(task_cfg)
        return out | self.facts()
