"""Calibration and evaluation texts of attention transfer, disjoint by topic and by content.

The bundled Python documentation (:mod:`harness.minilm.texts`) comes in topics (``assert``,
``calls``, ``specialnames``, ...). Attention transfer fits on the *calibration* topics (every
``every``-th topic in sorted order, the first included) and measures on the others, the
*evaluation* topics. pydoc repeats some paragraphs word for word in several topics, so a split
by topic name alone would leak text: any evaluation paragraph that also occurs in a calibration
topic is dropped from the evaluation side, and the retrieval pairs (halves of pydoc paragraphs,
:func:`harness.minilm.retrieval.all_retrieval_pairs`) are kept only when neither half occurs
in a calibration paragraph (and both fit in ``kv_len`` tokens). Passages are consecutive
paragraphs of one topic merged until they reach the wanted token count, then truncated to
exactly that many tokens when encoded (one fixed length, no padding: Linformer's projections
are built for it).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import random

from harness.minilm.retrieval import all_retrieval_pairs
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


@functools.cache
def _topic_passages(
    topics: tuple[str, ...], banned: frozenset[str], min_tokens: int
) -> tuple[str, ...]:
    """Passages of >= ``min_tokens`` tokens from ``topics``, never holding a ``banned`` paragraph.

    Paragraphs of one topic are taken in document order and grouped greedily; a group is closed
    once its token count ([CLS]/[SEP] counted once) reaches ``min_tokens``; a topic's short
    remainder is dropped, so a passage never spans topics.
    """
    wanted = set(topics)
    kept = [(t, p) for t, p in pydoc_paragraphs() if t in wanted and p not in banned]
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
    cal_paragraphs = frozenset(p for t, p in pydoc_paragraphs() if t in set(cal_topics))
    calibration = _pick(
        _topic_passages(tuple(cal_topics), frozenset(), kv_len), n_calibration, seed, "calibration"
    )
    held_out = _topic_passages(tuple(eval_topics), cal_paragraphs, kv_len)
    evaluation = _pick(held_out, n_evaluation, seed, "evaluation")
    pairs = _held_out_pairs(cal_paragraphs, kv_len)
    if len(pairs) < n_pairs:
        raise ValueError(
            f"transfer: retrieval_pairs={n_pairs} but only {len(pairs)} held-out pairs of at "
            f"most {kv_len} tokens exist"
        )
    random.Random(seed).shuffle(pairs)
    return TransferTexts(calibration, evaluation, pairs[:n_pairs], cal_topics, eval_topics)


def _held_out_pairs(cal_paragraphs: frozenset[str], kv_len: int) -> list[tuple[str, str]]:
    """Retrieval pairs no calibration paragraph holds, each half at most ``kv_len`` tokens.

    The bound keeps every text within what a variant built for ``kv_len`` keys can run
    (Linformer's projections); pairs are in document order.
    """
    pairs = [
        pair
        for pair in all_retrieval_pairs()
        if not any(half in cal for half in pair for cal in cal_paragraphs)
    ]
    counts = count_tokens([half for pair in pairs for half in pair])
    return [pair for i, pair in enumerate(pairs) if max(counts[2 * i : 2 * i + 2]) <= kv_len]
