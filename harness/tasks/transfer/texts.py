"""Calibration and evaluation texts of attention transfer, disjoint by topic and by content.

The bundled Python documentation (:mod:`harness.minilm.texts`) comes in topics (``assert``,
``calls``, ``specialnames``, ...). Attention transfer fits on the *calibration* topics (every
``every``-th topic in sorted order, the first included) and measures on the others, the
*evaluation* topics. pydoc repeats some paragraphs word for word in several topics, and follows
a full stop with one space or two, so content is compared with every run of whitespace made one
space: an evaluation paragraph that occurs in a calibration paragraph is dropped from the
evaluation side, and a retrieval pair (halves of a pydoc paragraph,
:func:`harness.minilm.retrieval.topic_retrieval_pairs`) is held out only when its paragraph is
of an evaluation topic, neither half occurs in a calibration paragraph and both fit in
``kv_len`` tokens. Within a side a repeated paragraph is kept once, so no two passages share
one. Passages are consecutive paragraphs of one topic merged until they reach the wanted token
count, then truncated to exactly that many tokens when encoded (one fixed length, no padding:
Linformer's projections are built for it).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import random

from harness.minilm.retrieval import topic_retrieval_pairs
from harness.minilm.texts import count_tokens, pydoc_paragraphs
from variants.base import check_int


@dataclasses.dataclass(frozen=True)
class TransferTexts:
    """The texts of one transfer run.

    Attributes:
        calibration: Passages the variants are fitted on (calibration topics only).
        evaluation: Held-out passages of the evaluation topics (model fidelity).
        pairs: Held-out retrieval pairs ``(first half, second half)``.
        calibration_topics: The calibration topics' names.
        evaluation_topics: The evaluation topics' names.
    """

    calibration: list[str]
    evaluation: list[str]
    pairs: list[tuple[str, str]]
    calibration_topics: list[str]
    evaluation_topics: list[str]


def split_topics(every: int = 3) -> tuple[list[str], list[str]]:
    """``(calibration, evaluation)`` topic names: every ``every``-th sorted topic calibrates."""
    check_int("transfer", "calibration_every", every, low=2, error=ValueError)
    topics = sorted({topic for topic, _ in pydoc_paragraphs()})
    return topics[::every], [t for i, t in enumerate(topics) if i % every]


def spaced(text: str) -> str:
    """``text`` with every run of whitespace made one space (how texts are compared here)."""
    return " ".join(text.split())


@functools.cache
def _topic_passages(topics: tuple[str, ...], banned: str, min_tokens: int) -> tuple[str, ...]:
    """Passages of >= ``min_tokens`` tokens from ``topics``, no paragraph twice and none whose
    :func:`spaced` form occurs in ``banned`` (paragraphs joined by newlines).

    Paragraphs of one topic are taken in document order and grouped greedily; a group is closed
    once its token count ([CLS]/[SEP] counted once) reaches ``min_tokens``; a topic's short
    remainder is dropped, so a passage never spans topics.
    """
    wanted = set(topics)
    kept: list[tuple[str, str]] = []
    seen: set[str] = set()
    for topic, paragraph in pydoc_paragraphs():
        key = spaced(paragraph)
        if topic in wanted and key not in seen and key not in banned:
            seen.add(key)
            kept.append((topic, paragraph))
    counts = count_tokens([p for _, p in kept]) if kept else []
    out: list[str] = []
    for _, group in itertools.groupby(zip(kept, counts), key=lambda item: item[0][0]):
        pending: list[str] = []
        budget = min_tokens - 2  # tokens still missing, specials excluded
        for (_, paragraph), count in group:
            pending.append(paragraph)
            budget -= count - 2
            if budget <= 0:
                out.append(" ".join(pending))
                pending, budget = [], min_tokens - 2
    return tuple(out)


def _pick(passages: tuple[str, ...], n: int, seed: int, side: str) -> list[str]:
    if len(passages) < n:
        raise ValueError(
            f"transfer: {n} {side} texts requested but the {side} topics hold only "
            f"{len(passages)} passages of that length"
        )
    return random.Random(seed).sample(list(passages), n)


def transfer_texts(
    kv_len: int,
    n_calibration: int,
    n_evaluation: int,
    n_pairs: int,
    seed: int = 0,
    every: int = 3,
) -> TransferTexts:
    """Calibration and held-out texts of at least ``kv_len`` tokens, disjoint (module docstring).

    Args:
        kv_len: Tokens per text ([CLS] and [SEP] included); texts are truncated to it.
        n_calibration: Number of calibration passages.
        n_evaluation: Number of held-out passages.
        n_pairs: Number of held-out retrieval pairs (0: none).
        seed: Chooses the passages (a seeded sample of each side).
        every: Every ``every``-th topic (sorted) is a calibration topic.

    Raises:
        ValueError: A side has fewer passages or pairs than requested (the message says so).
    """
    cal_topics, eval_topics = split_topics(every)
    # one calibration paragraph a line: a text found in it lies within one paragraph
    cal_text = "\n".join(spaced(p) for t, p in pydoc_paragraphs() if t in set(cal_topics))
    calibration = _pick(
        _topic_passages(tuple(cal_topics), "", kv_len), n_calibration, seed, "calibration"
    )
    held_out = _topic_passages(tuple(eval_topics), cal_text, kv_len)
    evaluation = _pick(held_out, n_evaluation, seed, "evaluation")
    pairs = _held_out_pairs(frozenset(eval_topics), cal_text, kv_len)
    if len(pairs) < n_pairs:
        raise ValueError(
            f"transfer: retrieval_pairs={n_pairs} but only {len(pairs)} held-out pairs of at "
            f"most {kv_len} tokens exist"
        )
    random.Random(seed).shuffle(pairs)
    return TransferTexts(calibration, evaluation, pairs[:n_pairs], cal_topics, eval_topics)


def _held_out_pairs(
    eval_topics: frozenset[str], cal_text: str, kv_len: int
) -> list[tuple[str, str]]:
    """Retrieval pairs of the evaluation topics whose halves (:func:`spaced`) no calibration
    paragraph holds, each half at most ``kv_len`` tokens.

    The bound keeps every text within what a variant built for ``kv_len`` keys can run
    (Linformer's projections); pairs are in document order.
    """
    pairs = [
        pair
        for topic, pair in topic_retrieval_pairs()
        if topic in eval_topics and not any(spaced(half) in cal_text for half in pair)
    ]
    counts = count_tokens([half for pair in pairs for half in pair])
    return [pair for i, pair in enumerate(pairs) if max(counts[2 * i : 2 * i + 2]) <= kv_len]
