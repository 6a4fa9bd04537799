"""The retrieval check: does the model still find the right neighbour with an approximation?

Each pydoc paragraph is split in two halves (:func:`retrieval_pairs`); every first half is a
query and all second halves are the candidates. The rank of the true second half by cosine
similarity of the sentence embeddings is computed with exact attention and with each variant.

Public: :func:`retrieval_pairs`, :func:`retrieval_check`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from harness.realmodel.adapter import VariantUnsupported
from harness.realmodel.embed import Embeddings, embed
from harness.realmodel.texts import pydoc_paragraphs
from variants.base import AttentionVariant

#: Exact-model embeddings per (n_pairs, device, batch_size): the same for every variant.
_exact_cache: dict[tuple[int, str, int], Tensor] = {}

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"*(])")


def retrieval_pairs(n_pairs: int = 32) -> list[tuple[str, str]]:
    """Real sentence pairs: the first and second half of one pydoc paragraph.

    Paragraphs of 4 to 10 sentences and at most 150 words, one per topic first (then a second
    per topic, ...) so that the pairs cover different subjects; deterministic.
    """
    by_topic: dict[str, list[tuple[str, str]]] = {}
    for topic, paragraph in pydoc_paragraphs():
        sentences = _SENTENCE_END.split(paragraph)
        if not 4 <= len(sentences) <= 10 or len(paragraph.split()) > 150:
            continue
        half = len(sentences) // 2
        pair = (" ".join(sentences[:half]), " ".join(sentences[half:]))
        by_topic.setdefault(topic, []).append(pair)
    pairs: list[tuple[str, str]] = []
    for round_ in itertools.count():
        batch = [p[round_] for p in by_topic.values() if len(p) > round_]
        if not batch:
            break
        pairs.extend(batch)
    if len(pairs) < n_pairs:
        raise ValueError(f"retrieval_pairs: n_pairs={n_pairs} but only {len(pairs)} exist")
    return pairs[:n_pairs]


def _ranks(queries: Tensor, docs: Tensor) -> Tensor:
    """Rank (1 = best) of the true document of each query by cosine similarity."""
    sims = queries @ docs.T  # (n, n), embeddings are normalised
    true = sims.diagonal().unsqueeze(1)
    return (sims > true).sum(1) + 1


def retrieval_check(
    variants: AttentionVariant | Mapping[str, AttentionVariant] | None = None,
    n_pairs: int = 32,
    device: str = "cpu",
    batch_size: int = 16,
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

    Returns:
        A pandas DataFrame, one row per attention (``exact`` first): ``variant``, ``params``,
        ``status``, ``n_pairs``, ``mean_rank``, ``median_rank``, ``top1`` (fraction at rank 1),
        ``top5``, ``agree_top1`` (fraction of queries whose best candidate is the same as with
        exact attention), ``embed_cosine`` (mean cosine of the embeddings to the exact
        model's) and ``reason`` for variants that could not run.
    """
    import pandas as pd

    if variants is None:
        variants = {}
    elif isinstance(variants, AttentionVariant):
        variants = {variants.name: variants}
    pairs = retrieval_pairs(n_pairs)
    texts = [q for q, _ in pairs] + [d for _, d in pairs]

    def run(variant: AttentionVariant | None) -> Embeddings:
        return embed(texts, variant, batch_size=batch_size, device=device, hidden_states=False)

    key = (n_pairs, device, batch_size)
    if key not in _exact_cache:  # the exact model's embeddings are the same for every variant
        _exact_cache[key] = run(None).embeddings.double()
    exact = _exact_cache[key]
    exact_best = (exact[:n_pairs] @ exact[n_pairs:].T).argmax(1)
    records = []
    for label, variant in [("exact", None), *variants.items()]:
        record: dict[str, Any] = {
            "variant": label,
            "params": {} if variant is None else variant.config(),
            "status": "ok",
            "n_pairs": n_pairs,
        }
        try:
            emb = exact if variant is None else run(variant.to(device).eval()).embeddings.double()
        except VariantUnsupported as exc:
            records.append(record | {"status": "unsupported", "reason": str(exc)})
            continue
        ranks = _ranks(emb[:n_pairs], emb[n_pairs:]).double()
        best = (emb[:n_pairs] @ emb[n_pairs:].T).argmax(1)
        record.update(
            mean_rank=float(ranks.mean()),
            median_rank=float(ranks.median()),
            top1=float((ranks == 1).double().mean()),
            top5=float((ranks <= 5).double().mean()),
            agree_top1=float((best == exact_best).double().mean()),
            embed_cosine=float((emb * exact).sum(-1).mean()),
            reason=None,
        )
        records.append(record)
    columns = ["variant", "params", "status", "n_pairs", "mean_rank", "median_rank", "top1",
               "top5", "agree_top1", "embed_cosine", "reason"]  # fmt: skip
    return pd.DataFrame.from_records(records, columns=columns)
