"""The retrieval check's ranks and the unrelated-passage cosine, on hand-made embeddings.

No model: the embeddings are written out, so ties, NaN and the reference cosine have known
answers.
"""

from __future__ import annotations

import math

import pytest
import torch

from harness.minilm.point import unrelated_cosine
from harness.minilm.retrieval import NonFiniteEmbeddings, retrieval_columns, true_ranks


def _separated(n: int, dim: int = 8) -> torch.Tensor:
    """``2 n`` unit embeddings: query i and document i identical, the pairs orthogonal."""
    basis = torch.eye(dim, dtype=torch.float64)[:n]
    return torch.cat([basis, basis])


def test_ties_count_against_the_true_candidate() -> None:
    same = torch.ones(4, 3, dtype=torch.float64) / math.sqrt(3)
    assert true_ranks(same, same).tolist() == [4, 4, 4, 4]  # every candidate ties: last
    # query 0's true document ties with document 1 and beats 2: rank 2, not 1; query 1's
    # ties with document 0 and loses to 2: rank 3
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    docs = torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    assert true_ranks(queries, docs).tolist() == [2, 3, 3]
    assert true_ranks(torch.eye(3), torch.eye(3)).tolist() == [1, 1, 1]


def test_an_all_tied_similarity_matrix_scores_no_hits() -> None:
    exact = _separated(5)
    tied = torch.full_like(exact, 1 / math.sqrt(exact.shape[1]))
    row = retrieval_columns(tied, exact)
    assert row["retrieval_exact_top1"] == 1.0
    assert row["retrieval_top1"] == 0.0 and row["retrieval_mean_rank"] == 5.0
    assert row["retrieval_worse"] == 5 and row["retrieval_better"] == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_embeddings_are_an_error_not_a_hit(bad: float) -> None:
    exact = _separated(5)
    broken = torch.full_like(exact, bad)
    with pytest.raises(NonFiniteEmbeddings, match="NaN/Inf"):
        retrieval_columns(broken, exact)
    with pytest.raises(NonFiniteEmbeddings, match="2 of 5 queries"):
        partly = exact.clone()
        partly[1, 0] = partly[3, 1] = bad
        true_ranks(partly[:5], partly[5:])
    with pytest.raises(NonFiniteEmbeddings):  # the exact side is checked as well
        retrieval_columns(exact, broken)


def test_unrelated_cosine_is_the_mean_over_different_texts_of_one_length() -> None:
    a, b, c = (torch.tensor(v, dtype=torch.float64) for v in ([1, 0], [0.6, 0.8], [0, 1]))
    emb = torch.stack([a, b, c, a])
    # texts 0, 1, 2 have 64 tokens, text 3 (the same passage as text 0, cut shorter) 32: only
    # pairs of one length count, so the repeat of text 0 is never compared with it
    assert unrelated_cosine(emb, [64, 64, 64, 32]) == pytest.approx((0.6 + 0.0 + 0.8) / 3)
    assert unrelated_cosine(emb, [64, 64, 32, 32]) == pytest.approx((0.6 + 0.0) / 2)
    assert math.isnan(unrelated_cosine(emb, [16, 32, 64, 128]))  # no two texts of one length
