"""``flex_attention`` for block-masked attention: the compiled kernel, its block mask, its cost.

Used by Longformer's ``flex`` backend. :func:`compiled_flex` compiles ``flex_attention`` once
per process with recompiles allowed and never silent; :func:`flex_reasons` says why it cannot
run on these inputs; :func:`block_mask_pairs` counts the work it does. ``flex_attention`` skips
the ``FLEX_BLOCK x FLEX_BLOCK`` tiles of its block mask that hold no visible pair and computes
every other tile whole (masking inside it), so its work is the area of the tiles with at least
one visible pair, not the number of visible pairs. The reference is
:mod:`variants.engines.flex_naive`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Hashable

import torch
from torch import Tensor

#: Tile size of ``create_block_mask`` (its default ``BLOCK_SIZE``), the unit flex skips.
FLEX_BLOCK = 128

_compiled_flex = None


def compiled_flex():
    """``flex_attention`` compiled once per process, with recompiles allowed and never silent."""
    global _compiled_flex
    if _compiled_flex is None:
        import torch._dynamo
        from torch.nn.attention.flex_attention import flex_attention

        cfg = torch._dynamo.config
        # A sweep compiles one graph per shape/window: allow many, and fail instead of
        # silently running eager flex_attention when the limit is hit anyway.
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 512))
        for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 8192))
        for name in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit"):
            if hasattr(cfg, name):
                setattr(cfg, name, True)
        cfg.suppress_errors = False
        _compiled_flex = torch.compile(flex_attention, dynamic=False, fullgraph=True)
    return _compiled_flex


def flex_attention_cached(
    q: Tensor, k: Tensor, v: Tensor, mask_mod: Callable, scale: float,
    cache: dict, key: Hashable, owner: str,
) -> Tensor:  # fmt: skip
    """Compiled ``flex_attention`` with the block mask of ``mask_mod``, built once per shape.

    Args:
        q, k, v: ``(B, H, Nq, D)``, ``(B, H, Nk, D)``, ``(B, H, Nk, Dv)``.
        mask_mod: ``mask_mod(b, h, q_idx, kv_idx)`` -> True where the query sees the key.
        scale: Softmax scale.
        cache: Dict of block masks; ``key`` names this mask (all that ``mask_mod`` depends on).
        owner: Name in the error raised when compiling or running fails.

    Returns:
        ``(B, H, Nq, Dv)``.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    if key not in cache:
        nq, nk = q.shape[-2], k.shape[-2]
        cache[key] = create_block_mask(mask_mod, None, None, nq, nk, device=q.device)
    try:
        return compiled_flex()(q, k, v, block_mask=cache[key], scale=scale)
    except Exception as exc:
        raise RuntimeError(
            f"{owner}: backend flex failed to compile/run ({type(exc).__name__}: {exc})"
        ) from exc


def flex_reasons(q: Tensor) -> list[str]:
    """Why the compiled ``flex_attention`` cannot run ``q``'s device and dtype (empty: it can)."""
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except Exception as exc:  # any import failure means unusable
        return [f"flex: torch.nn.attention.flex_attention unavailable ({exc})"]
    if q.device.type == "cpu":
        cxx = os.environ.get("CXX", "g++")
        if shutil.which(cxx) is None and shutil.which("c++") is None:
            return [
                f"flex: compiling flex_attention on CPU needs a C++ compiler ({cxx} not found)"
            ]
    if q.dtype == torch.float64:
        return ["flex: float64 is not supported by the compiled flex_attention kernels"]
    return []


def block_mask_pairs(
    q_len: int,
    kv_len: int,
    key_spans: Callable[[int, int], list[tuple[int, int]]],
    block: int = FLEX_BLOCK,
) -> int:
    """Score slots flex computes: the area of every tile holding a visible pair (per head).

    Args:
        q_len: Number of queries; kv_len: number of keys.
        key_spans: ``key_spans(first, last)`` -> inclusive key intervals ``(lo, hi)`` whose union
            is the set of keys visible to at least one of the query rows ``first..last``
            (empty intervals, ``lo > hi``, are allowed).
        block: Tile size of the block mask.

    Returns:
        The sum over query tiles of (rows of the tile) x (keys of every key tile it computes),
        tiles clipped to the lengths.
    """
    total = 0
    for first in range(0, q_len, block):
        last = min(first + block, q_len) - 1
        tiles: set[int] = set()
        for lo, hi in key_spans(first, last):
            lo, hi = max(lo, 0), min(hi, kv_len - 1)
            if lo <= hi:
                tiles.update(range(lo // block, hi // block + 1))
        keys = sum(min(block, kv_len - t * block) for t in tiles)
        total += (last - first + 1) * keys
    return total
