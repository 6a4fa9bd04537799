"""Real English text for the model: prose from Python's bundled documentation.

The text is ``pydoc_data.topics`` (part of the standard library): the prose paragraphs of each
topic (headings, grammar rules and indented code dropped), merged within a topic into passages
of at least ``min_tokens`` MiniLM tokens. The selection is deterministic for a given Python
version (the topics change between Python releases, so record the version with the results,
which ``harness.measure.env`` does).

Public: :func:`pydoc_paragraphs`, :func:`pydoc_texts`, :func:`count_tokens`.
"""

from __future__ import annotations

import functools
import random
import re

from harness.minilm.model import load_tokenizer
from variants.base import check_int

_HEADING_RULE = re.compile(r"^[*=\-~^#]{3,}$")


def _prose(block: str) -> str | None:
    """One blank-line separated block as a single line of prose, or ``None`` if it is not prose.

    Indented blocks are code, grammar or tables in pydoc's text rendering; underlined lines are
    headings; short fragments carry no sentence structure worth attending over.
    """
    lines = block.splitlines()
    if not lines or any(_HEADING_RULE.match(line.strip()) for line in lines):
        return None
    if lines[0][:1].isspace():
        return None
    text = " ".join(line.strip() for line in lines)
    # A paragraph ending in ":" introduces a code block that is dropped; leave it out too.
    if len(text.split()) < 8 or not text.endswith("."):
        return None
    return text


@functools.cache
def _topic_paragraphs() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(topic, prose paragraphs)`` for every pydoc topic, in sorted topic order."""
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        paragraphs = tuple(p for p in map(_prose, re.split(r"\n\s*\n", topics[name])) if p)
        if paragraphs:
            out.append((name, paragraphs))
    return tuple(out)


def pydoc_paragraphs() -> list[tuple[str, str]]:
    """Every prose paragraph of the bundled Python documentation as ``(topic, paragraph)``."""
    return [(name, p) for name, paragraphs in _topic_paragraphs() for p in paragraphs]


def count_tokens(texts: list[str]) -> list[int]:
    """MiniLM token counts including [CLS] and [SEP] (not truncated)."""
    # verbose=False: counting a long text is not feeding it to the model, so no length warning
    ids = load_tokenizer()(texts, truncation=False, verbose=False)["input_ids"]
    return [len(x) for x in ids]


@functools.cache
def _paragraph_token_counts() -> tuple[tuple[int, ...], ...]:
    """Token counts of every topic's paragraphs (one batched tokenizer call, cached)."""
    topics = _topic_paragraphs()
    counts = iter(count_tokens([p for _, paragraphs in topics for p in paragraphs]))
    return tuple(tuple(next(counts) for _ in paragraphs) for _, paragraphs in topics)


@functools.cache
def _passages(min_tokens: int) -> tuple[str, ...]:
    """Passages of >= ``min_tokens`` tokens: consecutive paragraphs of one topic, merged."""
    passages: list[str] = []
    for (_, paragraphs), counts in zip(_topic_paragraphs(), _paragraph_token_counts()):
        current: list[str] = []
        tokens = 0
        for paragraph, count in zip(paragraphs, counts):
            current.append(paragraph)
            tokens += count - 2  # the [CLS]/[SEP] pair is counted once per passage
            if tokens + 2 >= min_tokens:
                passages.append(" ".join(current))
                current, tokens = [], 0
        # a topic's remainder shorter than min_tokens is dropped: passages never span topics
    return tuple(passages)


def pydoc_texts(n: int, min_tokens: int = 16, seed: int | None = None) -> list[str]:
    """``n`` distinct English passages from Python's bundled documentation.

    Args:
        n: Number of passages.
        min_tokens: Each passage has at least this many MiniLM tokens (with [CLS] and [SEP]),
            so that truncating it to ``min_tokens`` gives exactly that length. At most 2048.
        seed: ``None`` takes the passages in document order (sorted topic names); an integer
            draws a seeded random sample, the same for the same seed.

    Returns:
        A list of ``n`` passages (plain text, one line each).

    Raises:
        ValueError: ``n`` or ``min_tokens`` out of range, or fewer than ``n`` passages are long
            enough (the message says how many there are).
    """
    check_int("pydoc_texts", "n", n, low=1, error=ValueError)
    check_int("pydoc_texts", "min_tokens", min_tokens, low=1, high=2048, error=ValueError)
    passages = list(_passages(min_tokens))
    if len(passages) < n:
        raise ValueError(
            f"pydoc_texts: n={n} passages of >= {min_tokens} tokens requested, but the bundled "
            f"documentation has only {len(passages)}"
        )
    if seed is None:
        return passages[:n]
    return random.Random(seed).sample(passages, n)
