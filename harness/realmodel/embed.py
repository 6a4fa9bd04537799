"""Sentence embeddings of all-MiniLM-L6-v2 with any attention, and their forward time.

Texts are tokenized (truncated to their lengths), right-padded in batches, run through the
model, mean-pooled over the attention mask and L2-normalised (the model's sentence-transformers
pooling). Timing goes through ``harness.measure.timing.time_callable`` and covers the model's
forward passes only: tokenizing happens before, pooling after.

Public: :class:`Embeddings`, :func:`embed`, :func:`timed_embed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from harness.measure.timing import time_callable
from harness.realmodel.adapter import use_variant
from harness.realmodel.model import encode, load_model, text_lengths
from variants.base import AttentionVariant, check_int


@dataclass
class Embeddings:
    """Sentence embeddings and per-layer hidden states of a list of texts.

    Attributes:
        embeddings: ``(n_texts, 384)`` L2-normalised mean-pooled embeddings (float32, CPU).
        hidden_states: ``hidden_states[l][i]`` is text i's ``(len_i, 384)`` output of layer
            ``l`` (0 = the embedding layer, 1..6 the transformer layers), real tokens only;
            empty when not requested.
        lengths: Token count of each text ([CLS] and [SEP] included).
    """

    embeddings: Tensor
    hidden_states: list[list[Tensor]]
    lengths: list[int]


def _pool(batches: list[dict[str, Tensor]], outputs: list[Any], hidden_states: bool) -> Embeddings:
    """Mean-pooled, normalised embeddings (and real-token hidden states) of the model outputs."""
    pooled: list[Tensor] = []
    layers: list[list[Tensor]] = []
    true_lengths: list[int] = []
    for batch, out in zip(batches, outputs):
        mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)  # (B, N, 1)
        mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, 384)
        pooled.append(torch.nn.functional.normalize(mean.float(), dim=-1).cpu())
        counts = batch["attention_mask"].sum(1).tolist()
        true_lengths.extend(counts)
        if hidden_states:
            if not layers:
                layers = [[] for _ in out.hidden_states]
            for layer, states in enumerate(out.hidden_states):  # states: (B, N, 384)
                # right padding: the real tokens come first
                layers[layer].extend(states[i, :n].float().cpu() for i, n in enumerate(counts))
    return Embeddings(torch.cat(pooled), layers, true_lengths)


def _run(
    texts: list[str],
    variant: AttentionVariant | None,
    lengths: int | list[int] | None,
    batch_size: int,
    device: str,
    hidden_states: bool,
    repeats: int | None,
) -> tuple[Embeddings, dict[str, float] | None]:
    """Embeddings of ``texts``; with ``repeats``, also the timing of the forward passes."""
    if not texts:
        raise ValueError("embed: texts is empty")
    check_int("embed", "batch_size", batch_size, low=1, error=ValueError)
    per_text = text_lengths(len(texts), lengths, "embed")
    model = load_model(device)
    batches = [
        {
            name: t.to(device)
            for name, t in encode(
                texts[start : start + batch_size], per_text[start : start + batch_size]
            ).items()
        }
        for start in range(0, len(texts), batch_size)
    ]
    outputs: list[Any] = []

    def forward() -> None:
        outputs.clear()  # free the previous call's outputs before computing new ones
        with torch.no_grad():
            outputs.extend(model(**b, output_hidden_states=hidden_states) for b in batches)

    timing = None
    with use_variant(model, variant):
        if repeats is None:
            forward()
        else:
            # the timer's first call is its warm-up; outputs keep the last call's results
            timing = time_callable(forward, device, min_run_time=0.0, min_repeats=repeats)
    return _pool(batches, outputs, hidden_states), timing


def embed(
    texts: list[str],
    variant: AttentionVariant | None = None,
    *,
    lengths: int | list[int] | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    hidden_states: bool = True,
) -> Embeddings:
    """Sentence embeddings as all-MiniLM-L6-v2 is meant to be used, with any attention.

    Args:
        texts: The texts.
        variant: Attention to run in every layer; ``None`` is the stock model (``sdpa``).
        lengths: Maximum tokens per text (one int or one per text); default 512.
        batch_size: Texts per forward pass.
        device: Device of the model.
        hidden_states: Also return every layer's hidden states (real tokens only).

    Raises:
        VariantUnsupported: The variant cannot run some of the inputs.
    """
    result, _ = _run(texts, variant, lengths, batch_size, device, hidden_states, None)
    return result


def timed_embed(
    texts: list[str],
    variant: AttentionVariant | None,
    *,
    lengths: int | list[int] | None,
    batch_size: int,
    device: str,
    repeats: int,
) -> tuple[Embeddings, dict[str, float]]:
    """:func:`embed` (with hidden states), and the wall time of its forward passes.

    One warm-up pass over all the texts, then ``repeats`` timed passes
    (``harness.measure.timing.time_callable``).

    Returns:
        ``(embeddings, {"time_ms", "time_iqr_ms", "repeats"})``; ``time_ms`` is the median time
        of one pass over all the texts.
    """
    check_int("embed", "repeats", repeats, low=1, error=ValueError)
    result, timing = _run(texts, variant, lengths, batch_size, device, True, repeats)
    assert timing is not None  # repeats was given
    return result, timing
