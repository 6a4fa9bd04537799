"""The retrieval check: does the model still find the right neighbour with an approximation?

Each pydoc paragraph is split in two halves (:func:`retrieval_pairs`); every first half is a
query and all second halves are the candidates. The rank of the true second half by cosine
similarity of the sentence embeddings is computed with exact attention and with each variant.

A fraction of a few hundred queries is a noisy number, so the check reports it with its 95%
Wilson interval (:func:`wilson_interval`), and compares each variant with exact attention *on
the same queries*: the discordant pairs (the variant right where exact attention is wrong, and
the opposite) and the exact McNemar test on them (:func:`mcnemar_p`). Two variants whose
intervals overlap can still differ significantly in the paired test, and the other way round.

Ranks count ties against the true candidate, and NaN/Inf embeddings are an error
(:class:`NonFiniteEmbeddings`), never a rank.

Public: :func:`topic_retrieval_pairs`, :func:`all_retrieval_pairs`, :func:`retrieval_pairs`,
:func:`wilson_interval`, :func:`mcnemar_p`, :func:`retrieval_check`; for a task's rows
:func:`embed_pairs`, :func:`exact_pair_embeddings` and :func:`retrieval_columns`.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from harness.minilm.adapter import VariantUnsupported
from harness.minilm.embed import embed, exact_cached
from harness.minilm.limits import MIN_PAIRS
from harness.minilm.texts import count_tokens, pydoc_paragraphs
from variants.base import AttentionVariant, check_int

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"*(])")


@functools.cache
def topic_retrieval_pairs() -> tuple[tuple[str, tuple[str, str]], ...]:
    """Every retrieval pair there is with its paragraph's pydoc topic, in document order.

    A pair is the first and second half (by sentences) of one prose paragraph of 2 to 10
    sentences and at most 150 words. Every text occurs once: a paragraph repeated word for word
    in another topic, or one whose half another pair already holds, is skipped, so no query has
    two true answers (and no two queries are the same text).
    """
    pairs: list[tuple[str, tuple[str, str]]] = []
    seen: set[str] = set()
    for topic, paragraph in pydoc_paragraphs():
        sentences = _SENTENCE_END.split(paragraph)
        if not 2 <= len(sentences) <= 10 or len(paragraph.split()) > 150:
            continue
        half = len(sentences) // 2
        pair = (" ".join(sentences[:half]), " ".join(sentences[half:]))
        if not seen.isdisjoint(pair):  # a repeated paragraph, or a half shared with another
            continue
        seen.update(pair)
        pairs.append((topic, pair))
    return tuple(pairs)


@functools.cache
def all_retrieval_pairs() -> tuple[tuple[str, str], ...]:
    """The pairs of :func:`topic_retrieval_pairs` without their topics."""
    return tuple(pair for _, pair in topic_retrieval_pairs())


def retrieval_pairs(n_pairs: int = MIN_PAIRS, seed: int = 0) -> list[tuple[str, str]]:
    """``n_pairs`` real sentence pairs: the two halves of one pydoc paragraph each.

    The pairs of :func:`all_retrieval_pairs` shuffled by ``seed``, the first ``n_pairs`` taken:
    deterministic for a seed (and Python version), and nested (the first 200 of 300 pairs are
    the 200 pairs).

    Raises:
        ValueError: ``n_pairs`` below 1 or above the number of pairs (the message says it).
    """
    check_int("retrieval_pairs", "n_pairs", n_pairs, low=1, error=ValueError)
    check_int("retrieval_pairs", "seed", seed, error=ValueError)
    pairs = list(all_retrieval_pairs())
    if len(pairs) < n_pairs:
        raise ValueError(f"retrieval_pairs: n_pairs={n_pairs} but only {len(pairs)} exist")
    random.Random(seed).shuffle(pairs)
    return pairs[:n_pairs]


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n``."""
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def mcnemar_p(better: int, worse: int) -> float:
    """Two-sided exact McNemar p-value of paired outcomes from their discordant counts.

    Under "the variant is as good as exact attention" each discordant query is equally likely
    to fall either way, so ``better`` is Binomial(better + worse, 1/2). No discordant pair is
    no evidence of a difference: p = 1.
    """
    from scipy.stats import binomtest

    if better + worse == 0:
        return 1.0
    return float(binomtest(better, better + worse, 0.5).pvalue)


class NonFiniteEmbeddings(ValueError):
    """Retrieval embeddings with NaN/Inf: no rank can be read from them (the message says
    whose and which)."""


def true_ranks(queries: Tensor, docs: Tensor) -> Tensor:
    """Rank (1 = best) of the true document of each query by cosine similarity.

    Ties count against the true document: its rank is 1 + the number of *other* documents at
    least as similar, so a query whose candidates all score the same ranks last.

    Raises:
        NonFiniteEmbeddings: A similarity is NaN or infinite (the message counts the queries).
    """
    sims = queries @ docs.T  # (n, n), embeddings are normalised
    broken = ~torch.isfinite(sims).all(1)
    if bool(broken.any()):
        raise NonFiniteEmbeddings(
            f"{int(broken.sum())} of {len(sims)} queries have NaN/Inf similarities"
        )
    true = sims.diagonal().unsqueeze(1)
    at_least = sims >= true
    at_least.fill_diagonal_(False)
    return at_least.sum(1) + 1


def _describe(variant: AttentionVariant | None) -> str:
    """``the exact model``, or the variant's name with its knob value."""
    if variant is None:
        return "the exact model"
    knob = getattr(variant, "knob", None)
    value = variant.config().get(knob) if knob else None
    return variant.name if value is None else f"{variant.name} ({knob}={value})"


def _check_finite(emb: Tensor, variant: AttentionVariant | None, counts: list[int]) -> None:
    """Raise :class:`NonFiniteEmbeddings` naming the model and the texts' token counts."""
    broken = (~torch.isfinite(emb).all(1)).nonzero().flatten().tolist()
    if broken:
        lengths = sorted({counts[i] for i in broken})
        span = str(lengths[0]) if len(lengths) == 1 else f"{lengths[0]}-{lengths[-1]}"
        raise NonFiniteEmbeddings(
            f"{_describe(variant)} gave NaN/Inf embeddings for {len(broken)} of {len(emb)} "
            f"retrieval texts ({span} tokens)"
        )


def embed_pairs(
    pairs: list[tuple[str, str]], variant: AttentionVariant | None, device: str, batch_size: int
) -> Tensor:
    """``(2 n, 384)`` float64 embeddings of the pairs' first halves, then their second halves.

    Raises :class:`NonFiniteEmbeddings` (naming the model, the number of texts and their token
    counts) when an embedding has NaN/Inf.

    Batched in order of token count: batches of similar lengths need little padding, and the
    adapter runs a variant once per distinct length in a batch, so this is several times faster
    than batching in pair order; padding never changes an embedding (the adapter's contract), so
    neither does the order.
    """
    texts = [q for q, _ in pairs] + [d for _, d in pairs]
    counts = count_tokens(texts)
    order = sorted(range(len(texts)), key=counts.__getitem__)
    found = embed(
        [texts[i] for i in order], variant, batch_size=batch_size, device=device,
        hidden_states=False,
    ).embeddings.double()  # fmt: skip
    out = torch.empty_like(found)
    out[order] = found
    _check_finite(out, variant, counts)
    return out


def exact_pair_embeddings(pairs: list[tuple[str, str]], device: str, batch_size: int) -> Tensor:
    """:func:`embed_pairs` of the exact model, computed once per process for the same pairs."""
    key = ("pairs", tuple(pairs), device, batch_size)
    return exact_cached(key, lambda: embed_pairs(pairs, None, device, batch_size))


def _statistics(ranks: Tensor, exact_ranks: Tensor) -> dict[str, Any]:
    """Top-1 with its interval, and the discordant counts and McNemar p against exact."""
    right, exact_right = ranks == 1, exact_ranks == 1
    n = len(ranks)
    hits = int(right.sum())
    better = int((right & ~exact_right).sum())
    worse = int((~right & exact_right).sum())
    low, high = wilson_interval(hits, n)
    return {
        "top1": hits / n,
        "top1_lo": low,
        "top1_hi": high,
        "better": better,
        "worse": worse,
        "mcnemar_p": mcnemar_p(better, worse),
    }


def _compare(emb: Tensor, exact: Tensor) -> dict[str, Any]:
    """The measures of :func:`embed_pairs` embeddings ``emb`` against the exact model's."""
    n = len(emb) // 2
    ranks, exact_ranks = true_ranks(emb[:n], emb[n:]), true_ranks(exact[:n], exact[n:])
    best = (emb[:n] @ emb[n:].T).argmax(1)
    exact_best = (exact[:n] @ exact[n:].T).argmax(1)
    return {
        "mean_rank": float(ranks.double().mean()),
        "median_rank": float(ranks.double().median()),
        **_statistics(ranks, exact_ranks),
        "top5": float((ranks <= 5).double().mean()),
        "agree_top1": float((best == exact_best).double().mean()),
        "embed_cosine": float((emb * exact).sum(-1).mean()),
    }


#: What a row carries of :func:`_compare`, each as ``retrieval_<name>``.
ROW_MEASURES = ("top1", "top1_lo", "top1_hi", "mean_rank", "agree_top1", "mcnemar_p", "better",
                "worse")  # fmt: skip


def retrieval_columns(emb: Tensor, exact: Tensor) -> dict[str, Any]:
    """A row's retrieval check: the variant's :func:`embed_pairs` ``emb`` against ``exact``.

    ``retrieval_pairs``; exact attention's top-1 with its 95% Wilson interval
    (``retrieval_exact_top1``, ``_lo``, ``_hi``); the variant's ``retrieval_top1`` with its
    interval, ``retrieval_mean_rank``, ``retrieval_agree_top1`` and the paired comparison on the
    same queries: ``retrieval_better`` (the variant right, exact wrong), ``retrieval_worse``
    (the opposite) and ``retrieval_mcnemar_p``.

    Raises:
        NonFiniteEmbeddings: Either side has NaN/Inf (a tie or a NaN is never a hit).
    """
    for whose, found in (("variant model", emb), ("exact model", exact)):
        if not bool(torch.isfinite(found).all()):
            raise NonFiniteEmbeddings(f"the {whose}'s retrieval embeddings contain NaN/Inf")
    mine, theirs = _compare(emb, exact), _compare(exact, exact)
    out: dict[str, Any] = {
        "retrieval_pairs": len(emb) // 2,
        "retrieval_exact_top1": theirs["top1"],
        "retrieval_exact_top1_lo": theirs["top1_lo"],
        "retrieval_exact_top1_hi": theirs["top1_hi"],
    }
    return out | {f"retrieval_{k}": mine[k] for k in ROW_MEASURES}


def retrieval_check(
    variants: AttentionVariant | Mapping[str, AttentionVariant] | None = None,
    n_pairs: int = MIN_PAIRS,
    device: str = "cpu",
    batch_size: int = 32,
    seed: int = 0,
) -> Any:
    """Does the model still find the right neighbour with an approximate attention?

    Each pydoc paragraph is split in two halves (:func:`retrieval_pairs`); every first half is a
    query and all second halves are the candidates. The rank of the true second half by
    cosine similarity is computed with exact attention and with each variant.

    Args:
        variants: One variant, a ``{label: variant}`` mapping, or ``None`` (exact only).
        n_pairs: Number of pairs (queries and candidates).
        device: Device of the model.
        batch_size: Texts per forward pass.
        seed: Chooses the pairs (:func:`retrieval_pairs`).

    Returns:
        A pandas DataFrame, one row per attention (``exact`` first): ``variant``, ``params``,
        ``status``, ``n_pairs``, ``mean_rank``, ``median_rank``, ``top1`` (fraction at rank 1)
        with ``top1_lo`` / ``top1_hi`` (95% Wilson interval), ``top5``, ``better`` / ``worse``
        (queries the variant gets right and exact attention wrong / the opposite),
        ``mcnemar_p`` (exact McNemar test on those), ``agree_top1`` (fraction of queries whose
        best candidate is the same as with exact attention), ``embed_cosine`` (mean cosine of
        the embeddings to the exact model's) and ``reason`` for variants that could not run
        (``status`` ``unsupported``, or ``nan`` for NaN/Inf embeddings).
    """
    import pandas as pd

    if variants is None:
        variants = {}
    elif isinstance(variants, AttentionVariant):
        variants = {variants.name: variants}
    pairs = retrieval_pairs(n_pairs, seed)
    exact = exact_pair_embeddings(pairs, device, batch_size)
    records = []
    for label, variant in [("exact", None), *variants.items()]:
        record: dict[str, Any] = {
            "variant": label,
            "params": {} if variant is None else variant.config(),
            "status": "ok",
            "n_pairs": n_pairs,
        }
        try:
            emb = (
                exact
                if variant is None
                else embed_pairs(pairs, variant.to(device).eval(), device, batch_size)
            )
        except VariantUnsupported as exc:
            records.append(record | {"status": "unsupported", "reason": str(exc)})
            continue
        except NonFiniteEmbeddings as exc:
            records.append(record | {"status": "nan", "reason": str(exc)})
            continue
        records.append(record | _compare(emb, exact) | {"reason": None})
    columns = ["variant", "params", "status", "n_pairs", "mean_rank", "median_rank", "top1",
               "top1_lo", "top1_hi", "top5", "better", "worse", "mcnemar_p", "agree_top1",
               "embed_cosine", "reason"]  # fmt: skip
    return pd.DataFrame.from_records(records, columns=columns)
