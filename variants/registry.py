"""The variant registry: built-ins by import path, plugins by entry point, both loaded lazily.

Re-exported by :mod:`variants`; kept apart from the package's ``__init__`` so that modules inside
the package (``variants.mha``) can build variants by name without importing the package itself.
"""

from __future__ import annotations

import contextlib
import importlib
from importlib import metadata
from typing import Any

from variants.base import AttentionVariant, VariantConfigError

ENTRY_POINT_GROUP = "attnbench.variants"

#: Built-in variants: registry name -> "module:Class". Imported on first use.
BUILTINS: dict[str, str] = {
    "full": "variants.full:FullAttention",
    "sdpa": "variants.sdpa:SDPAAttention",
    "xformers": "variants.xformers_attn:XFormersAttention",
    "longformer": "variants.longformer:LongformerAttention",
    "local": "variants.longformer:LocalAttention",
    "linformer": "variants.linformer:LinformerAttention",
    "performer": "variants.performer:PerformerAttention",
    "nystrom": "variants.nystrom:NystromAttention",
    "bigbird": "variants.bigbird:BigBirdAttention",
    "linear": "variants.linear:LinearAttention",
    "hedgehog": "variants.hedgehog:HedgehogAttention",
    "retention": "variants.retention:RetentionAttention",
    "deltanet": "variants.deltanet:DeltaNetAttention",
}


class UnknownVariantError(KeyError):
    """Raised for a variant name that is neither built in nor an installed plugin."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0])


_plugin_specs: dict[str, metadata.EntryPoint] | None = None
_plugin_errors: dict[str, str] = {}
_loaded: dict[str, type[AttentionVariant]] = {}


def _plugins() -> dict[str, metadata.EntryPoint]:
    """Entry points of installed plugins (names only; nothing is imported here)."""
    global _plugin_specs
    if _plugin_specs is None:
        _plugin_specs = {}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in BUILTINS:
                _plugin_errors[ep.name] = (
                    f"plugin {ep.value!r} uses the built-in name {ep.name!r}; ignored"
                )
                continue
            if ep.name in _plugin_specs and _plugin_specs[ep.name].value != ep.value:
                _plugin_errors[ep.name] = (
                    f"two plugins declare {ep.name!r} ({_plugin_specs[ep.name].value!r} and "
                    f"{ep.value!r}); both ignored"
                )
                continue
            _plugin_specs[ep.name] = ep
        for name in _plugin_errors:
            _plugin_specs.pop(name, None)
    return _plugin_specs


def builtin_names() -> list[str]:
    """Names of the built-in variants."""
    return list(BUILTINS)


def available() -> list[str]:
    """Names of every variant that can be created: built-ins, then installed plugins (sorted).

    Plugins are imported here to check them; one that fails to import or breaks the interface
    is left out and its reason is kept in :func:`plugin_errors`.
    """
    names = list(BUILTINS)
    for name in sorted(_plugins()):
        try:
            get_class(name)
        except Exception:  # recorded in plugin_errors by get_class
            continue
        names.append(name)
    return names


def plugin_errors() -> dict[str, str]:
    """Plugins that could not be used, with the reason."""
    _plugins()
    for name in list(_plugins()):
        # a failure is recorded in plugin_errors by get_class
        with contextlib.suppress(Exception):
            get_class(name)
    return dict(_plugin_errors)


def _validate_class(name: str, obj: Any) -> type[AttentionVariant]:
    if not (isinstance(obj, type) and issubclass(obj, AttentionVariant)):
        raise TypeError(f"{name}: {obj!r} is not a subclass of variants.AttentionVariant")
    for attr in ("exact", "supports_causal", "supports_cross"):
        if not isinstance(getattr(obj, attr, None), bool):
            raise TypeError(f"{name}: class constant {attr} must be a bool")
    for meth in sorted(getattr(obj, "__abstractmethods__", ())):  # forward, flops
        raise TypeError(f"{name}: {obj.__name__} does not implement {meth}()")
    if getattr(obj, "name", None) != name:
        raise TypeError(
            f"{name}: class attribute name={getattr(obj, 'name', None)!r} must equal the "
            f"registered name {name!r}"
        )
    return obj


def get_class(name: str) -> type[AttentionVariant]:
    """The class registered under ``name``; raises :class:`UnknownVariantError` if none."""
    if name in _loaded:
        return _loaded[name]
    if name in BUILTINS:
        module, _, attr = BUILTINS[name].partition(":")
        cls = _validate_class(name, getattr(importlib.import_module(module), attr))
    elif name in _plugins():
        ep = _plugins()[name]
        try:
            cls = _validate_class(name, ep.load())
        except Exception as exc:
            _plugin_errors[name] = f"{type(exc).__name__}: {exc}"
            raise UnknownVariantError(
                f"variant {name!r} is an installed plugin that cannot be used: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    else:
        known = list(BUILTINS) + sorted(_plugins())
        raise UnknownVariantError(f"unknown variant {name!r}; available: {', '.join(known)}")
    _loaded[name] = cls
    return cls


def create(name: str, **params: Any) -> AttentionVariant:
    """Build the variant ``name`` with ``params`` (always accepts ``kv_len`` and ``head_dim``).

    ``kv_len`` is the key/value length the variant is built for.

    Example:
        ``variants.create("performer", kv_len=4096, head_dim=64, nb_features=256, seed=0)``
    """
    cls = get_class(name)
    try:
        return cls(**params)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            import inspect

            allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self",)]
            bad = str(exc).split("argument")[-1].strip()
            raise VariantConfigError(
                f"{name}: unknown parameter {bad}; allowed: {', '.join(allowed)}"
            ) from exc
        raise
