"""Sentence embeddings of all-MiniLM-L6-v2 with any attention, and their forward time.

Texts are tokenized (truncated to their lengths), right-padded in batches, run through the
model, mean-pooled over the attention mask and L2-normalised (the model's sentence-transformers
pooling). :func:`paired_timed_embed` times the model with exact attention and with a variant
*interleaved* (exact, variant, exact, variant, ...), so that both medians come from the same
minutes of the machine's life; each forward is timed by ``harness.measure.timing`` and covers
the model's forward passes only: tokenizing happens before, pooling after.

Public: :class:`Embeddings`, :func:`embed`, :func:`paired_timed_embed`, :func:`exact_cached`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from harness.measure.timing import summarize, time_once_ms
from harness.minilm.adapter import use_variant
from harness.minilm.limits import MIN_PAIRED_REPEATS
from harness.minilm.model import encode, load_model, text_lengths
from variants.base import AttentionVariant, check_int

T = TypeVar("T")

#: The exact model's results by key (see :func:`exact_cached`).
_exact: dict[Hashable, Any] = {}


def exact_cached(key: Hashable, compute: Callable[[], T]) -> T:
    """``compute()`` once per process for ``key``: the exact model's results on fixed texts.

    The exact model is the same for every variant of a sweep job, so its embeddings (and
    whatever else a task computes from it alone) are computed for the first point and reused;
    ``key`` must name everything the result depends on (texts, device, batch size).
    """
    if key not in _exact:
        _exact[key] = compute()
    return _exact[key]


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


def _batches(
    texts: list[str], lengths: int | list[int] | None, batch_size: int, device: str
) -> list[dict[str, Tensor]]:
    """The texts tokenized (each truncated to its length) in right-padded batches on ``device``."""
    if not texts:
        raise ValueError("embed: texts is empty")
    check_int("embed", "batch_size", batch_size, low=1, error=ValueError)
    per_text = text_lengths(len(texts), lengths, "embed")
    return [
        {
            name: t.to(device)
            for name, t in encode(
                texts[start : start + batch_size], per_text[start : start + batch_size]
            ).items()
        }
        for start in range(0, len(texts), batch_size)
    ]


def _forward(
    model: Any, batches: list[dict[str, Tensor]], hidden_states: bool, outputs: list[Any]
) -> Callable[[], None]:
    """A zero-argument forward over all batches that leaves its results in ``outputs``."""

    def forward() -> None:
        outputs.clear()  # free the previous call's outputs before computing new ones
        with torch.no_grad():
            outputs.extend(model(**b, output_hidden_states=hidden_states) for b in batches)

    return forward


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
    batches = _batches(texts, lengths, batch_size, device)
    model = load_model(device)
    outputs: list[Any] = []
    with use_variant(model, variant):
        _forward(model, batches, hidden_states, outputs)()
    return _pool(batches, outputs, hidden_states)


def paired_timed_embed(
    texts: list[str],
    variant: AttentionVariant | None,
    *,
    lengths: int | list[int] | None,
    batch_size: int,
    device: str,
    repeats: int,
) -> tuple[Embeddings, Embeddings, dict[str, Any], dict[str, Any]]:
    """:func:`embed` (with hidden states) with exact attention and with ``variant``, timed.

    One untimed warm-up pass of each, then ``repeats`` rounds of one exact pass and one variant
    pass, each pass over all the texts timed on its own
    (:func:`harness.measure.timing.time_once_ms`), so that both sides see the same machine
    load. Switching the model's attention implementation between passes is not timed.

    Args:
        texts: The texts.
        variant: The attention to compare with the stock model (``None``: the stock model twice).
        lengths: Maximum tokens per text (one int or one per text).
        batch_size: Texts per forward pass.
        device: Device of the model.
        repeats: Timed rounds, at least :data:`MIN_PAIRED_REPEATS`.

    Returns:
        ``(exact embeddings, variant embeddings, exact timing, variant timing)``; a timing is
        ``{"time_ms", "time_iqr_ms", "repeats"}`` (:func:`harness.measure.timing.summarize`:
        the median and IQR of one pass over all the texts) plus ``times_ms``, the passes' times
        in order.

    Raises:
        VariantUnsupported: The variant cannot run some of the inputs.
    """
    check_int("embed", "repeats", repeats, low=MIN_PAIRED_REPEATS, error=ValueError)
    batches = _batches(texts, lengths, batch_size, device)
    model = load_model(device)
    stock = model.config._attn_implementation
    outputs: dict[str, list[Any]] = {"exact": [], "variant": []}
    times: dict[str, list[float]] = {"exact": [], "variant": []}
    with use_variant(model, variant):
        sides = {"exact": stock, "variant": model.config._attn_implementation}
        for round_ in range(repeats + 1):  # round 0 is the warm-up
            for side, implementation in sides.items():
                model.set_attn_implementation(implementation)
                took = time_once_ms(_forward(model, batches, True, outputs[side]), device)
                if round_:
                    times[side].append(took)
    exact, approx = (_pool(batches, outputs[side], True) for side in ("exact", "variant"))
    timing = {side: summarize(times[side]) | {"times_ms": times[side]} for side in times}
    return exact, approx, timing["exact"], timing["variant"]
