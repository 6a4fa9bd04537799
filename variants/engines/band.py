"""Banded attention in blocks: Longformer's ``chunked`` backend, O(Nq * window) time and memory.

Queries are cut into blocks of ``block`` rows; each block's keys are the contiguous span
``[start - window, start + block + window)``, an overlapping view of one padded key buffer
(:class:`BandSlots`; one copy of the keys, none per block). The blocks go through the fused
SDPA kernel of :mod:`variants.engines.blocksparse` as if they were heads; global query rows get
full attention. On the CPU (``Dv == D``) that is one autograd Function whose backward is the
flash kernel's own, the spans' gradient folded back onto the keys by :meth:`BandSlots.fold`,
and the global keys are scored apart and merged into every row through the log-sum-exp
(:class:`variants.engines.blocksparse.GlobalKeys`). Elsewhere autograd runs through the view,
and the global keys sit in front of every stored block (masked where the band holds them).
The mask is :func:`variants.engines.band_naive.band_mask`; the reference is
:func:`variants.engines.band_naive.band_attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from variants.engines.blocksparse import (
    BlockPlan,
    GlobalKeys,
    additive_mask,
    block_sparse_attention,
    fused_available,
    fused_block_sparse,
    keep_dropped_rows,
)


def block_size(window: int) -> int:
    # Query rows per block: small blocks waste fewer masked slots (span = block + 2 * window);
    # 32-64 rows suit the fused SDPA kernels' tiles (measured on CPU at window 256, n 8192:
    # 32 -> 164 ms, 64 -> 171 ms, 128 -> 202 ms, 256 -> 219 ms). The fused CPU path blocks its
    # forward by :func:`forward_block_size` and its backward by this.
    return min(64, max(16, window // 4))


def forward_block_size(window: int) -> int:
    """Query rows per block of the fused CPU forward: at most 32, the CPU flash kernel's query
    tile (a block of 32 at window 256 scores 544 slots per row, not 576: 5-8% faster); the
    backward keeps :func:`block_size`'s 64, since it writes a key and value gradient per slot
    and 32-row blocks double those (forward+backward 20% slower, docs/performance.md)."""
    return min(32, block_size(window))


def block_candidates(default: int) -> tuple[int, ...]:
    """The blockings a tuner tries around a default: half, the default and double (>= 8)."""
    return tuple(sorted({max(8, default // 2), default, 2 * default}))


def chunked_attention(
    q: Tensor, k: Tensor, v: Tensor, window: int, num_global: int, causal: bool, scale: float,
    masks: dict | None = None, block: int | None = None, forward_block: int | None = None,
) -> Tensor:  # fmt: skip
    """Banded attention in O(Nq * window) with one fused SDPA call over blocks (module docstring).

    Args:
        q, k, v: ``(B, H, Nq, D)``, ``(B, H, Nk, D)``, ``(B, H, Nk, Dv)``.
        window: One-sided radius; num_global: global tokens; causal: bottom-right causal mask.
        scale: Softmax scale. masks: Optional dict used to cache the block masks per shape.
        block: Query rows per block (the fused path's backward; both passes elsewhere);
            default :func:`block_size`. forward_block: The fused forward's; default
            :func:`forward_block_size`.
    """
    nq, nk = q.shape[-2], k.shape[-2]
    window = min(window, nq + nk)  # a wider window sees nothing more
    gq, gk = min(num_global, nq), min(num_global, nk)
    cache = masks if masks is not None else {}
    shape = (nq, nk, window, causal, gq, gk)
    block = block or block_size(window)
    if fused_available(q, k, v):  # global keys merged apart (GlobalKeys); two blockings
        forward_block = forward_block or forward_block_size(window)
        forward = _fused_plan(*shape, forward_block, q.device, q.dtype, cache)
        backward = forward  # the backward's blocking (and its mask) only where autograd runs
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            backward = _fused_plan(*shape, block, q.device, q.dtype, cache)
        return fused_block_sparse(q, k, v, forward, backward, gq, causal, scale)
    geo = geometry(nq, nk, window, causal, gk, block)
    mask = _chunk_mask(*shape, block, geo, q.device, cache, gk)
    layout = _layout(nk, gk, geo, q.device, cache)
    k_slots, v_slots = layout.view(layout.store(k)), layout.view(layout.store(v))
    return block_sparse_attention(q, k_slots, v_slots, mask, k, v, gq, causal, scale)


def _layout(nk: int, slot_gk: int, geo: tuple, device, cache: dict) -> BandSlots:
    key = ("slots", nk, slot_gk, geo, str(device))
    if key not in cache:
        cache[key] = BandSlots(nk, slot_gk, geo, device)
    return cache[key]


def _fused_plan(nq, nk, window, causal, gq, gk, block, device, dtype, cache) -> BlockPlan:
    """The fused path's blocking by ``block`` rows (cached): no global key slots."""
    key = ("plan", nq, nk, window, causal, gq, gk, block, str(device), dtype)
    if key not in cache:
        geo = geometry(nq, nk, window, causal, 0, block)
        mask = _chunk_mask(nq, nk, window, causal, gq, gk, block, geo, device, None, 0)
        cache[key] = BlockPlan(
            block,
            _layout(nk, 0, geo, device, cache),
            additive_mask(mask, dtype)[None],  # (1, nqb, block, S)
            _global_keys(nq, nk, causal, gk, mask, dtype),
        )
    return cache[key]


def _global_keys(nq: int, nk: int, causal: bool, gk: int, mask: Tensor, dtype):
    """The global keys as the fused path merges them (:class:`GlobalKeys`), from the slots'
    boolean ``(nqb, block, S)`` mask; None without global keys."""
    if not gk:
        return None
    rows = torch.arange(mask.shape[0] * mask.shape[1], device=mask.device)  # padded block rows
    allowed = None
    if causal:  # key j <= the row's position; padding rows see all (they are dropped)
        j = torch.arange(gk, device=mask.device)
        allowed = (j <= rows[:, None] + (nk - nq)) | (rows[:, None] >= nq)
    band_empty = ~mask.flatten(0, 1).any(-1)  # (R,)
    return GlobalKeys(
        gk,
        None if allowed is None or allowed.all() else additive_mask(allowed, dtype),
        band_empty if band_empty.any() else None,
    )


class BandSlots:
    """The spans of the query blocks as overlapping views of one stored buffer per tensor.

    The buffer is ``(B*H, nkb, stride, E)``: stored key block ``t`` holds the ``gk`` global keys
    and then keys ``t * block - lead .. + block``; query block ``n`` sees stored blocks ``n ..
    n + blocks - 1``, ``blocks * stride`` consecutive rows of the buffer, so the spans are one
    ``as_strided`` view and nothing is copied per query block. Rows past either end of the keys
    repeat the first or last key: every such slot is masked, and a finite key there scores
    ``-inf`` and gets no gradient, so the buffer is one ``index_select`` (no zero fill, one
    single-threaded pass) and the gradient one ``index_add_`` of the buffer's. Built once per
    shape (cached with the masks), with the key of every stored row.
    """

    def __init__(self, nk: int, gk: int, geo: tuple, device) -> None:
        self.nk, self.gk = nk, gk
        self.nqb, self.nkb, lead, self.blocks, self.stride = geo
        block = self.stride - gk
        # without global slots the buffer is the keys padded (or cropped) at both ends: one
        # contiguous copy, threaded, where the gather runs on one thread
        self.pad = (0, 0, lead, self.nkb * block - lead - nk)
        t = torch.arange(self.nkb, device=device)[:, None]
        r = torch.arange(self.stride, device=device)[None, :]
        band = (t * block + (r - gk) - lead).clamp(0, nk - 1)
        self.rows = torch.where(r < gk, r, band).flatten()  # key of every stored row

    def store(self, x: Tensor) -> Tensor:
        """``(B, H, Nk, E)`` -> the ``(B*H, nkb, stride, E)`` buffer (differentiable)."""
        b, h, _, e = x.shape
        if not self.gk:  # rows outside the keys are zeros here, not edge keys: masked alike
            return F.pad(x, self.pad).contiguous().view(b * h, self.nkb, self.stride, e)
        flat = x.reshape(b * h, self.nk, e)
        return flat.index_select(1, self.rows).view(b * h, self.nkb, self.stride, e)

    def view(self, store: Tensor) -> Tensor:
        """The ``(B*H, nqb, blocks * stride, E)`` spans: an overlapping view of ``store``."""
        e, rows = store.shape[-1], self.stride * store.shape[-1]
        size = (store.shape[0], self.nqb, self.blocks * self.stride, e)
        return store.as_strided(size, (self.nkb * rows, rows, e, 1))

    def fold(self, grad: Tensor, like: Tensor, into: Tensor | None = None) -> Tensor:
        """Gradient of ``x`` (shaped like ``like``) from the gradient ``(B*H, nqb, S, E)`` of
        its spans, added into ``into`` (e.g. the global rows' key gradient) or zeros.

        Query block ``n``'s ``t``-th stored block is block ``n + t``: ``blocks`` strided adds
        give the buffer's gradient (vectorised, threaded), and one ``index_add_`` over its
        ``nkb * stride`` rows the keys'. (One ``index_add_`` straight from the ``nqb * S``
        slots runs on one thread: 27 ms against 7 ms per tensor at n=8192, w=256.)
        """
        b, h, _, e = like.shape
        spans = grad.unflatten(2, (self.blocks, self.stride))  # (BH, nqb, blocks, stride, E)
        acc = grad.new_zeros(b * h, self.nkb, self.stride, e)
        for t in range(self.blocks):
            acc[:, t : t + self.nqb] += spans[:, :, t]
        if not self.gk:  # the padding's adjoint: crop (or zero-pad) back to the keys
            keys = F.pad(acc.view(b, h, -1, e), tuple(-x for x in self.pad))
            return keys if into is None else into.add_(keys)
        out = like.new_zeros(like.shape) if into is None else into
        return out.index_add_(2, self.rows, acc.view(b, h, -1, e))


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


def _chunk_mask(nq, nk, window, causal, gq, gk, block, geo, device, cache, slot_gk) -> Tensor:
    """Cached boolean ``(nqb, block, blocks * stride)`` mask of the blocks' key slots; the
    ``gk`` global keys are excluded from the band, and held in ``slot_gk`` (``gk`` or 0)
    slots in front of each stored block."""
    key = (nq, nk, window, causal, gq, gk, block, str(device), slot_gk)
    if cache is not None and key in cache:
        return cache[key]
    nqb, _, lead, blocks, stride = geo
    i = torch.arange(nqb * block, device=device).view(nqb, block, 1)  # query row
    pos = i + (nk - nq)
    slot = torch.arange(blocks * stride, device=device)
    t, r = slot // stride, slot % stride  # stored key block (relative), slot within it
    n = torch.arange(nqb, device=device).view(nqb, 1, 1)
    j = (n + t) * block + (r - slot_gk) - lead  # key index of band slots, (nqb, 1, slots)
    band = (r >= slot_gk) & (j >= gk) & (j < nk) & (j >= pos - window)
    band = band & (j <= pos + (0 if causal else window))
    # global key r is counted once: in the first stored block of the span
    glob = (r < slot_gk) & (t == 0) & ((r <= pos) if causal else True)
    mask = keep_dropped_rows(band | glob, i, nq, gq)
    if cache is not None:
        cache[key] = mask
    return mask
