"""Grouped-query heads (Ainslie et al. 2023, "GQA"): ``kv_heads`` key/value heads shared by
groups of ``heads // kv_heads`` query heads; query head ``h`` reads KV head ``h // group``
(the layout of ``repeat_interleave`` and of SDPA's ``enable_gqa``)."""

from __future__ import annotations

from torch import Tensor


def kv_heads_problem(heads: int, kv_heads: int) -> str | None:
    """Why ``kv_heads`` cannot serve ``heads`` query heads; None when it divides them."""
    if kv_heads < 1 or heads % kv_heads:
        return f"kv_heads={kv_heads} must divide heads={heads}"
    return None


def group_size(q: Tensor, k: Tensor) -> int:
    """Query heads per KV head of ``q (B, H, *, D)``, ``k (B, Hkv, *, D)``; ``ValueError``
    naming ``kv_heads`` when ``Hkv`` does not divide ``H``."""
    problem = kv_heads_problem(q.shape[1], k.shape[1])
    if problem:
        raise ValueError(problem)
    return q.shape[1] // k.shape[1]


def repeat_kv(x: Tensor, group: int) -> Tensor:
    """``(B, Hkv, N, E)`` -> ``(B, Hkv * group, N, E)``: each KV head repeated for its group."""
    return x if group == 1 else x.repeat_interleave(group, dim=1)


def grouped_queries(q: Tensor, kv_heads: int) -> Tensor:
    """``(B, H, T, D)`` -> ``(B, Hkv, G * T, D)``: a group's queries as rows of its KV head."""
    b, h, t, d = q.shape
    return q.reshape(b, kv_heads, h // kv_heads * t, d)


def ungroup(out: Tensor, heads: int) -> Tensor:
    """Inverse of :func:`grouped_queries`: ``(B, Hkv, G * T, E)`` -> ``(B, H, T, E)``."""
    b, hkv, rows, e = out.shape
    return out.reshape(b, heads, rows * hkv // heads, e)


def repeat_bytes(
    batch: int, heads: int, kv_heads: int | None, kv_len: int, head_dim: int, element_size: int
) -> int:
    """Bytes of k and v repeated to the query heads (zero without grouping)."""
    if kv_heads is None or kv_heads == heads:
        return 0
    return 2 * batch * heads * kv_len * head_dim * element_size
