"""Plain-PyTorch reference of :mod:`variants.engines.flex`: the ``mask_mod`` evaluated on the
whole ``(Nq, Nk)`` grid, dense masked softmax, and the tiles a block mask computes counted from
that grid (:func:`variants.engines.flex.block_mask_pairs`'s cost)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from variants.engines.blocksparse_naive import masked_attention


def dense_mask(mask_mod: Callable, q_len: int, kv_len: int, device=None) -> Tensor:
    """``mask_mod(0, 0, i, j)`` for every query ``i`` and key ``j``: boolean
    ``(q_len, kv_len)``."""
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(kv_len, device=device)[None, :]
    zero = torch.zeros((), dtype=torch.int64, device=device)
    return mask_mod(zero, zero, i, j).expand(q_len, kv_len)


def flex_attention(q: Tensor, k: Tensor, v: Tensor, mask_mod: Callable, scale: float) -> Tensor:
    """What :func:`variants.engines.flex.flex_attention_cached` computes: ``(B, H, Nq, Dv)``."""
    allowed = dense_mask(mask_mod, q.shape[-2], k.shape[-2], q.device)
    return masked_attention(q, k, v, allowed, scale)


def tile_pairs(allowed: Tensor, block: int) -> int:
    """Score slots of a block mask over ``allowed (Nq, Nk)``: every ``block x block`` tile that
    holds an allowed pair counts whole (clipped to the lengths)."""
    total = 0
    for first in range(0, allowed.shape[0], block):
        for start in range(0, allowed.shape[1], block):
            tile = allowed[first : first + block, start : start + block]
            if tile.any():
                total += tile.numel()
    return total
