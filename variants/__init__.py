"""attnbench attention variants and their registry.

The whole public face of the registry is :func:`available` and :func:`create` (plus
:func:`get_class` and :func:`plugin_errors` for tools). Built-ins are listed here by import path
and imported only when asked for; plugins are classes in any installed package, declared under
the entry-point group ``attnbench.variants`` and loaded lazily. A plugin that fails to import, or
whose class breaks the interface, is recorded in :func:`plugin_errors` and never breaks the
others. A plugin may not reuse a built-in's name (it is reported, not silently overwritten).
"""

from __future__ import annotations

from variants.base import AttentionVariant, VariantConfigError, causal_mask, check_qkv
from variants.decode import DecodeState
from variants.mha import MultiHeadAttention
from variants.registry import (
    BUILTINS,
    ENTRY_POINT_GROUP,
    UnknownVariantError,
    available,
    builtin_names,
    create,
    get_class,
    plugin_errors,
)

__all__ = [
    "BUILTINS",
    "ENTRY_POINT_GROUP",
    "AttentionVariant",
    "DecodeState",
    "MultiHeadAttention",
    "UnknownVariantError",
    "VariantConfigError",
    "available",
    "builtin_names",
    "causal_mask",
    "check_qkv",
    "create",
    "get_class",
    "plugin_errors",
]
