"""Bytes of recurrent state of a trained model: the state-size axis of Zoology (Arora et al. 2023).

What a model must keep per sequence to produce the next token, summed over its layers and heads:

* exact attention: the whole cache, keys and values of all ``n`` positions: ``2 n d``;
* a sliding window (``local``, ``longformer``): the keys and values it sees, ``2 (w + 1 + g) d``
  causal (``2 (2w + 1 + g) d`` bidirectional, ``g`` global tokens), at most the whole cache;
* BigBird: the keys and values of the blocks one query sees, ``2 b (2 w_b + 1 + g_b + r) d``
  (a lower bound: its random blocks reach any earlier block), at most the whole cache;
* a linear state (``linear``, ``performer``, ``hedgehog``): the running sum of ``phi(k) v^T`` and
  of ``phi(k)``, ``f d + f`` for ``f`` features (linear: ``f = d``, elu + 1; hedgehog:
  ``f = 2 d``; performer: ``nb_features``);
* Linformer and Nystrom (bidirectional only): their ``k`` projected or landmark keys and values;
* retention: the decayed sum of ``k v^T`` and its key sum (the normaliser), ``d d + d``
  (``d d`` without ``normalize``); the delta rule (``deltanet``): its ``d x d`` matrix.

Numbers are the element count times the bytes of the row's dtype. A variant without a rule here
has no state size (the report names it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Bytes per element of the training dtypes.
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
#: Features of the linear-state variants, as a multiple of head_dim (performer: its knob).
FEATURES_PER_DIM = {"linear": 1, "hedgehog": 2, "cosformer": 2}
#: One line per rule, for figure notes.
RULE = (
    "bytes of recurrent state over all layers and heads: exact attention 2·n·d (the whole "
    "cache), windows 2·(keys seen)·d, BigBird 2·(keys of its blocks)·d, linear states f·d + f "
    "(f features: linear d, hedgehog 2d, performer nb_features), retention d·d + d, DeltaNet d·d, "
    "Linformer/Nyström 2·k·d"
)


def _num(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def per_head_elements(
    variant: str, params: Mapping[str, Any], n: int, head_dim: int, causal: bool, exact: bool
) -> float | None:
    """Elements of state one head of one layer keeps (see the module docstring), or None."""
    d, cache = float(head_dim), 2.0 * n * head_dim
    if exact:
        return cache
    if variant in ("local", "longformer") and "window" in params:
        w, g = _num(params["window"]), _num(params.get("num_global"))
        keys = (w + 1 if causal else 2 * w + 1) + g
        return min(2.0 * keys * d, cache)
    if variant == "bigbird" and "block_size" in params:
        blocks = 2 * _num(params.get("window_blocks"), 1) + 1
        blocks += _num(params.get("num_global_blocks"), 1) + _num(params.get("num_random_blocks"))
        return min(2.0 * _num(params["block_size"]) * blocks * d, cache)
    if variant == "performer" and "nb_features" in params:
        f = _num(params["nb_features"])
        return f * d + f
    if variant in FEATURES_PER_DIM:
        f = FEATURES_PER_DIM[variant] * d
        return f * d + f
    if variant == "retention":
        return d * d + (d if params.get("normalize", True) else 0.0)
    if variant == "deltanet":
        return d * d
    if variant == "linformer" and "k" in params:
        return 2.0 * min(_num(params["k"]), n) * d
    if variant == "nystrom" and "num_landmarks" in params:
        return 2.0 * min(_num(params["num_landmarks"]), n) * d
    return None


def state_bytes(
    variant: str,
    params: Mapping[str, Any],
    n: int,
    head_dim: int,
    heads: int,
    layers: int,
    causal: bool,
    exact: bool,
    dtype: str = "float32",
) -> float | None:
    """Bytes of recurrent state of the whole model (all layers and heads), or None."""
    per_head = per_head_elements(variant, params, n, head_dim, causal, exact)
    if per_head is None:
        return None
    return per_head * heads * layers * DTYPE_BYTES.get(dtype, 4)
