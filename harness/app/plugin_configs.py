"""Hydra configs for installed plugins, generated from their classes, and the variant listing.

An installed plugin is usable as ``attnbench variant=<name>`` without a YAML file in
``conf/variant/``: :func:`register_plugin_configs` stores, for every plugin without such a file,
a structured config node in Hydra's ConfigStore (group ``variant``, name ``<name>``). The node is
a dataclass made from the constructor's signature: ``_target_`` (``module.Class``, for
``hydra.utils.instantiate``) plus every parameter with its default and type, so that the command
line can override them with type checking (``variant.chunk_size=32``; ``variant.chunk_size=abc``
and unknown keys are refused). :data:`HARNESS_PARAMS` (``kv_len``, ``head_dim``, ``seed``) are
left out: the harness passes them per point. A parameter whose type or default cannot live in a
config (a ``torch.dtype``, an object) is left out too and keeps its class default.

:func:`describe_variants` reports every variant, built-in or plugin, with its status and the
reason a broken one cannot be used; ``attnbench-variants`` prints it.

This module imports hydra and variants only (variants/ never imports harness/).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.resources
import inspect
import pathlib
import typing
from importlib import metadata
from pathlib import Path
from typing import Any

import variants

#: Constructor parameters the harness passes per measurement point (not part of a config).
HARNESS_PARAMS: frozenset[str] = frozenset({"kv_len", "head_dim", "seed"})

_PRIMITIVES: tuple[type, ...] = (int, float, str, bool, bytes, pathlib.Path)


def default_conf_dir() -> Path:
    """The app's config folder, ``conf/`` (installed as the package ``harness.conf``)."""
    return Path(str(importlib.resources.files("harness.conf")))


def plugin_names() -> list[str]:
    """Usable installed plugins: ``variants.available()`` minus the built-ins."""
    builtins = set(variants.builtin_names())
    return [name for name in variants.available() if name not in builtins]


def _config_type(annotation: Any, default: Any) -> Any:
    """The type OmegaConf checks for a parameter, or ``Any`` when it cannot check it."""
    if annotation is inspect.Parameter.empty:
        return Any
    args = typing.get_args(annotation)
    if args and type(None) in args:  # Optional[X] / X | None
        rest = [a for a in args if a is not type(None)]
        inner = _config_type(rest[0], None) if len(rest) == 1 else Any
        return Any if inner is Any else inner | None
    if annotation in _PRIMITIVES or (
        isinstance(annotation, type) and issubclass(annotation, enum.Enum)
    ):
        if default is None or default is dataclasses.MISSING or isinstance(default, annotation):
            return annotation
        if annotation is float and isinstance(default, int) and not isinstance(default, bool):
            return annotation
    return Any


def _storable(value: Any) -> bool:
    """True when a default value can live in an OmegaConf config."""
    if value is None or isinstance(value, (*_PRIMITIVES, enum.Enum)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_storable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _storable(v) for k, v in value.items())
    return False


def config_dataclass(cls: type[variants.AttentionVariant]) -> type:
    """A dataclass with ``_target_`` and the constructor's parameters of ``cls``.

    Args:
        cls: A variant class.

    Returns:
        A dataclass type named ``<Class>Config``; parameters without a default are ``MISSING``
        (``???``: the command line must set them).
    """
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: fall back to untyped fields
        hints = {}
    fields: list[tuple[str, Any, Any]] = [
        ("_target_", str, dataclasses.field(default=f"{cls.__module__}.{cls.__qualname__}"))
    ]
    skipped_kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    for param in list(inspect.signature(cls.__init__).parameters.values())[1:]:  # after self
        if param.name in HARNESS_PARAMS or param.kind in skipped_kinds:
            continue
        default = param.default
        if default is inspect.Parameter.empty:
            fields.append(
                (
                    param.name,
                    _config_type(hints.get(param.name, param.annotation), None),
                    dataclasses.field(default="???"),
                )
            )
            continue
        if not _storable(default):
            continue
        ftype = _config_type(hints.get(param.name, inspect.Parameter.empty), default)
        if isinstance(default, (list, dict, tuple)):
            value = list(default) if isinstance(default, tuple) else default
            field = dataclasses.field(default_factory=lambda value=value: value.copy())
        else:
            field = dataclasses.field(default=default)
        fields.append((param.name, ftype, field))
    return dataclasses.make_dataclass(f"{cls.__name__}Config", fields)


def register_plugin_configs(
    config_store: Any | None = None, conf_dir: str | Path | None = None
) -> list[str]:
    """Register a ConfigStore node ``variant/<name>`` for every plugin without a YAML file.

    Call it before Hydra composes the config (e.g. at the top of the app's ``cli``). Hydra's
    launchers carry the ConfigStore to their jobs, so one call in the launching process is
    enough.

    Args:
        config_store: A ``hydra.core.config_store.ConfigStore``; default its singleton.
        conf_dir: The app's config folder; a plugin with ``<conf_dir>/variant/<name>.yaml`` is
            left to that file. Default :func:`default_conf_dir`.

    Returns:
        The names registered.
    """
    if config_store is None:
        from hydra.core.config_store import ConfigStore

        config_store = ConfigStore.instance()
    variant_dir = Path(conf_dir if conf_dir is not None else default_conf_dir()) / "variant"
    registered = []
    for name in plugin_names():
        if (variant_dir / f"{name}.yaml").exists():
            continue
        node = config_dataclass(variants.get_class(name))
        config_store.store(group="variant", name=name, node=node, provider="attnbench-plugins")
        registered.append(name)
    return registered


def _entry_points() -> dict[str, list[metadata.EntryPoint]]:
    found: dict[str, list[metadata.EntryPoint]] = {}
    for ep in metadata.entry_points(group=variants.ENTRY_POINT_GROUP):
        found.setdefault(ep.name, []).append(ep)
    return found


def _distribution(ep: metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return None if dist is None else f"{dist.metadata['Name']} {dist.version}"


def _capabilities(cls: type[variants.AttentionVariant]) -> dict[str, Any]:
    return {
        "exact": cls.exact,
        "approximates_softmax": getattr(cls, "approximates_softmax", True),
        "supports_causal": cls.supports_causal,
        "supports_bidirectional": getattr(cls, "supports_bidirectional", True),
        "supports_cross": cls.supports_cross,
        "knob": cls.knob,
    }


def describe_variants() -> list[dict[str, Any]]:
    """Every variant with where it comes from and whether it can be used.

    Returns:
        One dict per variant, built-ins first (in registry order), then plugins sorted by name:
        ``name``, ``source`` (``builtin`` or ``plugin``), ``target`` (``module:Class``),
        ``distribution`` (``"name version"`` of a plugin's package), ``ok``, ``error`` (the
        reason when not ok), and the capability constants ``exact``, ``supports_causal``,
        ``supports_cross``, ``knob`` when the class loads. A plugin that reuses a built-in's name
        is listed as a broken plugin beside the built-in.
    """
    rows: list[dict[str, Any]] = []
    for name, target in variants.BUILTINS.items():
        row: dict[str, Any] = {
            "name": name,
            "source": "builtin",
            "target": target,
            "distribution": None,
            "ok": True,
            "error": None,
        }
        try:
            row.update(_capabilities(variants.get_class(name)))
        except Exception as exc:  # a listing reports, never raises
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        rows.append(row)
    errors = variants.plugin_errors()
    for name, eps in sorted(_entry_points().items()):
        row = {
            "name": name,
            "source": "plugin",
            "target": ", ".join(ep.value for ep in eps),
            "distribution": ", ".join(d for d in map(_distribution, eps) if d) or None,
            "ok": name not in errors,
            "error": errors.get(name),
        }
        if row["ok"]:
            row.update(_capabilities(variants.get_class(name)))
        rows.append(row)
    return rows
