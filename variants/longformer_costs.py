"""Cost models of Longformer's backends (:mod:`variants.longformer`): FLOPs and memory.

The counts follow the backend that runs. ``chunked`` counts every slot of the query blocks' key
spans (masked ones included), the global rows and, on the fused CPU path, the global keys scored
apart (:class:`variants.engines.blocksparse.GlobalKeys`: their backward recomputes the scores and
adds four products); elsewhere the global keys sit in every stored key block's slots. The fused
path blocks its forward and its backward apart (by default 32 and 64 rows at window 256; tuned
or set, :meth:`LongformerCosts.band_knobs`), each counted in its own blocking as the last call
ran it. ``dense_mask`` counts the whole ``Nq x Nk`` matrix (the mask skips nothing); ``flex``
every 128 x 128 tile of its block mask that holds a visible pair; ``xformers`` the band's pairs.
Every backend is a fused kernel whose backward recomputes the scores: 2.5x the forward
(chunked: the forward in the backward's blocking). ``auto`` is counted as the backend of the
last call (``chunked``, its CPU choice, before any call).
"""

from __future__ import annotations

import math

import torch

from variants.base import exact_attention_flops, recomputing_backward_flops
from variants.engines.band import block_candidates, block_size, forward_block_size, geometry
from variants.engines.blocksparse import block_sparse_flops, global_key_flops
from variants.engines.flex import FLEX_BLOCK, block_mask_pairs
from variants.grouped import repeat_bytes
from variants.tuning import Knob, TunedEngine


class LongformerCosts(TunedEngine):
    """Mixin of :class:`variants.longformer.LongformerAttention`: its cost models and the
    chunked backend's blockings (:meth:`band_knobs`, counted in the values of the last call).

    Needs ``window``, ``num_global``, ``backend``, ``_last_backend`` (the backend of the last
    call), ``_fused`` (whether the last chunked call ran the fused CPU kernel) and
    ``block_size``, ``forward_block_size`` (None: tuned).
    """

    window: int
    num_global: int
    backend: str
    _last_backend: str | None
    _fused: bool

    def band_knobs(self, window: int, fused: bool) -> tuple[Knob, ...]:
        """The chunked backend's query rows per block: on the fused CPU path the forward's
        (timed in the forward) and the backward's (timed forward+backward); elsewhere one
        blocking for both passes."""
        block = block_size(window)
        if not fused:
            return (Knob("block_size", block, block_candidates(block)),)
        first = forward_block_size(window)
        return (
            Knob("forward_block_size", first, block_candidates(first), ("fwd",)),
            Knob("block_size", block, block_candidates(block), ("fwd_bwd",)),
        )

    def _cost_backend(self) -> str:
        """The backend the cost models count: the pinned one; for ``auto`` the last call's.

        Before any call ``auto`` is counted as ``chunked``, its choice on the CPU (the only
        device where the harness refuses points by the estimate before running them).
        """
        if self.backend != "auto":
            return self.backend
        return self._last_backend or "chunked"

    def _geometry(
        self, q_len: int, kv_len: int, causal: bool, backward: bool = False
    ) -> tuple[tuple, int, int]:
        """The chunked backend's block layout (:func:`variants.engines.band.geometry`) in the
        forward (or ``backward``), its query rows per block and the global keys merged apart from
        the slots: the fused CPU path blocks its forward by
        :func:`~variants.engines.band.forward_block_size` and its backward by
        :func:`~variants.engines.band.block_size`, global keys apart; elsewhere both passes by
        the latter, global keys in the slots."""
        window = min(self.window, q_len + kv_len)
        gk = min(self.num_global, kv_len)
        knobs = self.band_knobs(window, self._fused)
        if not self._fused:
            block = self.engine_value(knobs[0])
            return geometry(q_len, kv_len, window, causal, gk, block), block, 0
        block = self.engine_value(knobs[1] if backward else knobs[0])
        return geometry(q_len, kv_len, window, causal, 0, block), block, gk

    def _work(
        self, q_len: int, kv_len: int, causal: bool, backward: bool = False
    ) -> tuple[int, int, int, int]:
        """(rows computed by the block algorithm, key slots per row, global query rows, global
        keys scored apart from the slots) of the forward (or ``backward``)."""
        geo, block, merged = self._geometry(q_len, kv_len, causal, backward)
        nqb, _, _, blocks, stride = geo
        return nqb * block, blocks * stride, min(self.num_global, q_len), merged

    def _band_pairs(self, q_len: int, kv_len: int, causal: bool) -> int:
        """Visible (query, key) pairs of the band alone (no global tokens), per head."""
        pos = torch.arange(q_len, dtype=torch.int64) + (kv_len - q_len)
        lo = (pos - self.window).clamp(min=0)
        hi = (pos + (0 if causal else self.window)).clamp(max=kv_len - 1)
        return int((hi - lo + 1).clamp(min=0).sum())

    def _key_spans(self, q_len: int, kv_len: int, causal: bool):
        """``spans(first, last)``: key intervals visible to query rows first..last (flex cost)."""
        off, window, glob = kv_len - q_len, self.window, self.num_global
        right = 0 if causal else window

        def spans(first: int, last: int) -> list[tuple[int, int]]:
            top = last + off if causal else kv_len - 1  # last key any of these rows may see
            if first < glob:  # a global query row sees every key
                return [(0, top)]
            return [(first + off - window, last + off + right), (0, min(glob - 1, top))]

        return spans

    def flops(
        self,
        batch: int,
        heads: int,
        q_len: int,
        kv_len: int,
        head_dim: int,
        causal: bool,
        kv_heads: int | None = None,
    ) -> int:
        # The work of the backend that runs (``_cost_backend``), 2 * 2 * D per scored slot.
        backend, bh = self._cost_backend(), batch * heads
        if backend == "dense_mask":  # the fused kernel scores every pair; the mask skips none
            return exact_attention_flops(batch, heads, q_len, kv_len, head_dim)
        if backend == "flex":  # every FLEX_BLOCK-square tile holding a visible pair, whole
            pairs = block_mask_pairs(q_len, kv_len, self._key_spans(q_len, kv_len, causal))
            return 4 * bh * head_dim * pairs
        if backend == "xformers":  # the band's tiles, counted as its visible pairs
            return 4 * bh * head_dim * self._band_pairs(q_len, kv_len, causal)
        # chunked: every query block scores its whole key span (masked slots included), plus
        # full rows for the global queries and the global keys (in the slots or apart).
        rows, slots, gq, merged = self._work(q_len, kv_len, causal)
        return block_sparse_flops(batch, heads, head_dim, rows, slots, gq, kv_len) + bh * (
            global_key_flops(rows, merged, head_dim)
        )

    def backward_flops(
        self,
        batch: int,
        heads: int,
        q_len: int,
        kv_len: int,
        head_dim: int,
        causal: bool,
        kv_heads: int | None = None,
    ) -> int:
        # Fused kernels: 2.5x (the scores recomputed), the chunked path's in the backward's
        # blocking; its global keys scored apart: their scores again and four products.
        if self._cost_backend() != "chunked":
            return super().backward_flops(batch, heads, q_len, kv_len, head_dim, causal)
        rows, slots, gq, merged = self._work(q_len, kv_len, causal, backward=True)
        blocks = block_sparse_flops(batch, heads, head_dim, rows, slots, gq, kv_len)
        keys = batch * heads * global_key_flops(rows, merged, head_dim, backward=True)
        return recomputing_backward_flops(blocks) + keys

    def analytic_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4, kv_heads=None
    ) -> int:
        # k and v repeated to the query heads (grouped heads), then the backend's own
        repeated = repeat_bytes(batch, heads, kv_heads, kv_len, head_dim, element_size)
        return repeated + self._backend_mem_bytes(
            batch, heads, q_len, kv_len, head_dim, causal, element_size
        )

    def _backend_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size
    ) -> int:
        backend, bh = self._cost_backend(), batch * heads
        out_lse = bh * q_len * (head_dim * element_size + 4)  # output, one log-sum-exp per row
        if backend == "dense_mask":
            # the cached boolean (Nq, Nk) mask and the float bias SDPA makes of it; the fused
            # kernel keeps no score matrix (measured on the CPU: 19.5 MB at n=2048, 4 heads,
            # d 64 for the call, against 18.9 MB for the bias and the output)
            return q_len * kv_len * (1 + element_size) + out_lse
        if backend == "flex":  # plus the block mask's four int32 (q tiles, kv tiles) tables
            tiles = math.ceil(q_len / FLEX_BLOCK) * math.ceil(kv_len / FLEX_BLOCK)
            return out_lse + 16 * tiles
        if backend == "xformers":
            return out_lse
        rows, slots, _, merged = self._work(q_len, kv_len, causal)
        (_, nkb, _, _, stride), _, _ = self._geometry(q_len, kv_len, causal)
        # the stored k and v blocks (global keys interleaved unless merged apart), the output
        # blocks, a padded copy of q when q_len is not a multiple of the block (else a view),
        # one log-sum-exp per row and the global keys' scores; the fused kernel keeps no score
        # matrix; the block mask, boolean and additive (in the inputs' dtype), is shared by
        # batch and heads (measured on the CPU at n=8192, 8 heads, d 64, w 256, no globals, 32-row
        # forward blocks: 70.6 MB for the call, `speedcheck --memory`; this model: 75.0 MB)
        q_rows = rows if rows != q_len else 0
        per_head = element_size * (2 * nkb * stride + rows + q_rows) * head_dim + 4 * rows
        per_head += 4 * rows * (merged + 1) if merged else 0
        return bh * per_head + (1 + element_size) * rows * slots
