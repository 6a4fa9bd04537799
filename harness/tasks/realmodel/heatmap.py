"""Heatmap data: the attention matrices of one MiniLM head on one sentence, exact and approximate.

Each realmodel job writes ``heatmap.json`` beside its ``rows.jsonl``; the report merges every
such file it finds and draws them without running a model. The file holds::

    {"sentence": str, "layer": int, "head": int, "tokens": [str], "exact": [[float]],
     "panels": [{"variant": str, "label": str, "matrix": [[float]]}],
     "skipped": [{"variant": str, "reason": str}]}

``exact`` is the softmax attention of the captured q, k (rows are queries, each sums to 1); a
panel is the effective matrix a variant applies to V
(``harness.measure.accuracy.effective_attention``). A job's variant is drawn at the small
settings of :data:`HEATMAP_PARAMS` (its defaults suit thousands of tokens, not ten), built for
``kv_len`` = the sentence's token count; an exact variant draws no panel, and one that cannot
be built or run on the sentence is listed under ``skipped`` with the reason.

Public: :data:`HEATMAP_PARAMS`, :func:`heatmap_variant`, :func:`attention_heatmap_data`,
:func:`variant_heatmap`, :func:`write_heatmap`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harness.measure.accuracy import effective_attention
from harness.measure.factory import shape_kwargs
from harness.measure.reference import reference_probs
from harness.minilm.adapter import VariantUnsupported
from harness.minilm.capture import sentence_qkv
from harness.minilm.limits import HEAD_DIM, MAX_TOKENS
from harness.minilm.texts import count_tokens
from harness.tasks.realmodel.config import RealmodelConfig
from variants.base import AttentionVariant

HEATMAP_FILE = "heatmap.json"
HEATMAP_SENTENCE = RealmodelConfig.heatmap_sentence

#: Small-knob settings for heatmaps of a ~10-token sentence (defaults suit thousands of tokens).
HEATMAP_PARAMS: dict[str, dict[str, Any]] = {
    "local": {"window": 2},
    "longformer": {"window": 2, "num_global": 1},
    "linformer": {"k": 4},
    "performer": {"nb_features": 32, "seed": 0},
    "nystrom": {"num_landmarks": 4},
    "bigbird": {"seed": 0},
}


def heatmap_variant(cls: type[AttentionVariant], kv_len: int) -> tuple[str, AttentionVariant]:
    """``(label, variant)``: ``cls`` at its heatmap settings, built for ``kv_len`` keys.

    The label names the settings (``longformer (window=2, num_global=1)``; seeds left out); a
    variant without an entry in :data:`HEATMAP_PARAMS` keeps its defaults.
    """
    params = HEATMAP_PARAMS.get(cls.name, {})
    shown = ", ".join(f"{k}={v}" for k, v in params.items() if k != "seed")
    label = f"{cls.name} ({shown})" if shown else cls.name
    return label, cls(**params, **shape_kwargs(cls, kv_len, HEAD_DIM))


def _panel(variant: AttentionVariant, q: Tensor, k: Tensor) -> Tensor:
    """The ``(N, N)`` float64 matrix ``variant`` applies to V on q, k ``(1, 1, N, 32)``."""
    variant = variant.eval()
    # float64 where supported so that the matrix shows the approximation, not rounding
    dtype = torch.float64 if torch.float64 in variant.supported_dtypes else torch.float32
    q, k = q.to(dtype), k.to(dtype)
    reasons = variant.not_supported_reasons(q, k, k, False)  # V has k's shape
    if reasons:
        raise VariantUnsupported(reasons)
    return effective_attention(variant, q, k, causal=False)[0, 0]  # (N, N)


def attention_heatmap_data(
    sentence: str = HEATMAP_SENTENCE,
    layer: int = 0,
    head: int = 0,
    variants: Mapping[str, AttentionVariant] | None = None,
) -> dict[str, Any]:
    """Exact and effective attention matrices of one MiniLM head on one sentence.

    Args:
        sentence: The text (its tokens, [CLS] and [SEP] included, label the axes).
        layer: Layer, 0..5.
        head: Head, 0..11.
        variants: ``{label: variant}``, one panel each; may be empty (then only the exact
            matrix). A variant that cannot run the sentence is listed under ``skipped``.

    Returns:
        The ``heatmap.json`` mapping (module docstring); matrices are ``N x N`` nested lists of
        floats, rows are queries.
    """
    q, k, _, tokens = sentence_qkv(sentence, layer, head)  # (1, 1, N, 32) each
    exact = reference_probs(q, k)[0, 0]  # (N, N) float64
    panels, skipped = [], []
    for label, variant in (variants or {}).items():
        try:
            matrix = _panel(variant, q, k)
        except Exception as exc:  # noqa: BLE001 - one variant failing leaves the others
            unsupported = isinstance(exc, VariantUnsupported)
            reason = str(exc) if unsupported else f"{type(exc).__name__}: {exc}"
            skipped.append({"variant": variant.name, "reason": reason})
            continue
        panels.append({"variant": variant.name, "label": label, "matrix": matrix.tolist()})
    return {
        "sentence": sentence,
        "layer": layer,
        "head": head,
        "tokens": tokens,
        "exact": exact.tolist(),
        "panels": panels,
        "skipped": skipped,
    }


def variant_heatmap(
    cls: type[AttentionVariant], sentence: str = HEATMAP_SENTENCE, layer: int = 0, head: int = 0
) -> dict[str, Any]:
    """:func:`attention_heatmap_data` with one panel: ``cls`` at its heatmap settings.

    An exact variant adds no panel (the exact matrix is its picture); one that cannot be built
    for the sentence's length is listed under ``skipped``.
    """
    built: dict[str, AttentionVariant] = {}
    skipped = []
    if not cls.exact:
        (n_tokens,) = count_tokens([sentence])
        try:
            label, variant = heatmap_variant(cls, min(n_tokens, MAX_TOKENS))
        except Exception as exc:  # noqa: BLE001 - a variant that cannot be built is skipped
            skipped.append({"variant": cls.name, "reason": f"{type(exc).__name__}: {exc}"})
        else:
            built[label] = variant
    data = attention_heatmap_data(sentence, layer, head, built)
    data["skipped"] = skipped + data["skipped"]
    return data


def write_heatmap(out_dir: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """Write ``data`` to ``<out_dir>/heatmap.json`` atomically (temporary file, then rename)."""
    path = Path(out_dir) / HEATMAP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".heatmap-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
