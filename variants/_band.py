"""Banded attention in blocks: Longformer's ``chunked`` backend, O(Nq * window) time and memory.

Queries are cut into blocks of ``block`` rows; each block's keys are the contiguous span
``[start - window, start + block + window)``, taken as an overlapping ``unfold`` view of one
padded key buffer (no copy), with the global keys in front of every span (band slots that hold a
global key are masked so it is not counted twice). The blocks then go through the fused SDPA
kernel of :mod:`variants._blocksparse` as if they were heads, and global query rows are computed
with full attention. The mask is :func:`variants.longformer.longformer_mask`'s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from variants._blocksparse import block_sparse_attention, keep_dropped_rows


def block_size(window: int) -> int:
    # Query rows per block: small blocks waste fewer masked slots (span = block + 2 * window);
    # 32-64 rows suit the fused SDPA kernels' tiles (measured on CPU at window 256, n 8192:
    # 32 -> 164 ms, 64 -> 171 ms, 128 -> 202 ms, 256 -> 219 ms).
    return min(64, max(16, window // 4))


def chunked_attention(
    q: Tensor, k: Tensor, v: Tensor, window: int, num_global: int, causal: bool, scale: float,
    masks: dict | None = None,
) -> Tensor:  # fmt: skip
    """Banded attention in O(Nq * window) with one fused SDPA call over blocks (module docstring).

    Args:
        q, k, v: ``(B, H, Nq, D)``, ``(B, H, Nk, D)``, ``(B, H, Nk, Dv)``.
        window: One-sided radius; num_global: global tokens; causal: bottom-right causal mask.
        scale: Softmax scale. masks: Optional dict used to cache the block masks per shape.
    """
    b, h, nq, _ = q.shape
    nk = k.shape[-2]
    bh = b * h
    window = min(window, nq + nk)  # a wider window sees nothing more
    block = block_size(window)
    gq, gk = min(num_global, nq), min(num_global, nk)
    geo = geometry(nq, nk, window, causal, gk, block)
    nqb, nkb, lead, blocks, stride = geo  # stride = gk + block slots per stored key block
    mask = _chunk_mask(nq, nk, window, causal, gq, gk, block, geo, q.device, masks)

    def windows(x: Tensor) -> Tensor:  # (B, H, Nk, E) -> overlapping view (BH, nqb, slots, E)
        e = x.shape[-1]
        xp = F.pad(x.reshape(bh, nk, e), (0, 0, lead, nkb * block - lead - nk))
        if gk:  # every stored key block is preceded by the global keys (one copy of the keys)
            glob = x[:, :, :gk].reshape(bh, 1, gk, e).expand(bh, nkb, gk, e)
            xp = torch.cat([glob, xp.view(bh, nkb, block, e)], dim=2)
        flat = F.pad(xp.reshape(bh * nkb * stride, e), (0, 0, 0, (blocks - 1) * stride))
        win = flat.unfold(0, blocks * stride, stride).view(bh, nkb, e, blocks * stride)
        return win.transpose(-1, -2)[:, :nqb]  # the spans of the query blocks, no copy

    return block_sparse_attention(q, windows(k), windows(v), mask, k, v, gq, causal, scale)


def geometry(nq: int, nk: int, window: int, causal: bool, gk: int, block: int) -> tuple:
    """Block layout of :func:`chunked_attention`: ``(nqb, nkb, lead, blocks, stride)``.

    Keys are padded left by ``lead`` (a multiple of ``block``; negative crops) so that query
    block ``n`` needs exactly the stored key blocks ``n .. n + blocks - 1``; ``nkb`` key blocks
    are stored per head, each as ``stride = gk + block`` slots (global keys, then the block).
    """
    off = nk - nq  # query i sits at key position i + off (bottom right)
    right = 0 if causal else window
    nqb = math.ceil(nq / block)
    lead = math.ceil((window - off) / block) * block
    # first key of query block n: n*block + off - window, in stored block n (lead >= window-off)
    blocks = 1 + (block - 1 + off + right + lead) // block
    nkb = nqb + blocks - 1
    return nqb, nkb, lead, blocks, gk + block


def _chunk_mask(nq, nk, window, causal, gq, gk, block, geo, device, cache) -> Tensor:
    """Cached boolean ``(nqb, block, blocks * stride)`` mask of the blocks' key slots."""
    key = (nq, nk, window, causal, gq, gk, block, str(device))
    if cache is not None and key in cache:
        return cache[key]
    nqb, _, lead, blocks, stride = geo
    i = torch.arange(nqb * block, device=device).view(nqb, block, 1)  # query row
    pos = i + (nk - nq)
    slot = torch.arange(blocks * stride, device=device)
    t, r = slot // stride, slot % stride  # stored key block (relative), slot within it
    n = torch.arange(nqb, device=device).view(nqb, 1, 1)
    j = (n + t) * block + (r - gk) - lead  # key index of band slots, (nqb, 1, slots)
    band = (r >= gk) & (j >= gk) & (j < nk) & (j >= pos - window)
    band = band & (j <= pos + (0 if causal else window))
    # global key r is counted once: in the first stored block of the span
    glob = (r < gk) & (t == 0) & ((r <= pos) if causal else True)
    mask = keep_dropped_rows(band | glob, i, nq, gq)
    if cache is not None:
        cache[key] = mask
    return mask
