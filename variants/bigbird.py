"""Block-sparse attention of BigBird (Zaheer et al. 2020, "Big Bird: Transformers for Longer
Sequences").

Approximates softmax attention by a block-sparse pattern: the sequence is cut into blocks of
``block_size`` tokens, and each query block attends to

* the ``2 * window_blocks + 1`` neighbouring key blocks (sliding window; causal: the
  ``window_blocks`` previous blocks and its own),
* the first ``num_global_blocks`` blocks, whose tokens are global: they see every key and every
  query sees them (as in BigBird-ITC),
* ``num_random_blocks`` random key blocks drawn, without repetition, among the blocks not already
  covered (causal: only blocks entirely in the past). The draw is seeded by ``seed`` and shared
  by all batch elements and heads, so the pattern is one ``(N, N)`` mask
  (:meth:`BigBirdAttention.effective_mask`); a new seed draws new blocks.

Within the selected blocks attention is token-exact (the causal mask is applied per token).
Cost is O(N * block_size * (window + random blocks) + N * global tokens), computed with one
gather of key/value blocks and the fused SDPA kernel of :mod:`variants.engines.blocksparse`, in
which the query blocks play the role of heads (a 4-d block mask); there is no loop over tokens
or heads. Lengths that are not a multiple of ``block_size`` are padded and the padding masked.

Cross-attention (``q_len != kv_len``) is not supported: the block pattern pairs query block i
with key block i, which only has a meaning in self-attention (BigBird's encoder-decoder models
use full attention for cross-attention).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from variants.base import (
    AttentionVariant,
    VariantConfigError,
    check_nonneg_int,
    check_positive_int,
)
from variants.engines.blocksparse import (
    block_sparse_attention,
    block_sparse_flops,
    keep_dropped_rows,
    to_blocks,
)
from variants.grouped import repeat_bytes


class BigBirdAttention(AttentionVariant):
    """BigBird block-sparse attention: window + global + random key blocks.

    Args:
        block_size: Tokens per block. Default 64.
        num_random_blocks: Random key blocks per query block (the accuracy/cost knob). Default 3.
        window_blocks: One-sided sliding window in blocks (1 -> 3 blocks, as in the paper).
        num_global_blocks: Leading blocks made global. Default 1.
        seed: Seed of the random block draw.
        kv_len: Sequence length the variant is built for (self-attention: the key length too);
            bounds ``num_global_blocks``.
        head_dim: Ignored.
        scale: Softmax scale; default ``1/sqrt(head_dim)``.
    """

    name: ClassVar[str] = "bigbird"
    exact: ClassVar[bool] = False
    supports_cross: ClassVar[bool] = False
    randomized: ClassVar[bool] = True
    knob: ClassVar[str | None] = "num_random_blocks"
    no_decode_reason: ClassVar[str] = (
        "no decode form: the random key blocks are drawn over the blocks of the whole "
        "sequence, so the pattern (and each query's keys) changes as the sequence grows"
    )
    #: fused SDPA kernels on the blocks and the global rows (backward 2.5x the forward)
    recomputes_scores: ClassVar[bool] = True

    def __init__(
        self,
        block_size: int = 64,
        num_random_blocks: int = 3,
        window_blocks: int = 1,
        num_global_blocks: int = 1,
        seed: int = 0,
        kv_len: int | None = None,
        head_dim: int | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim, scale=scale)
        self.block_size = check_positive_int(self.name, "block_size", block_size)
        self.num_random_blocks = check_nonneg_int(
            self.name, "num_random_blocks", num_random_blocks
        )
        self.window_blocks = check_nonneg_int(self.name, "window_blocks", window_blocks)
        self.num_global_blocks = check_nonneg_int(
            self.name, "num_global_blocks", num_global_blocks
        )
        self.seed = check_nonneg_int(self.name, "seed", seed)
        if kv_len is not None and num_global_blocks > math.ceil(kv_len / block_size):
            raise VariantConfigError(
                f"{self.name}: num_global_blocks={num_global_blocks} exceeds the "
                f"{math.ceil(kv_len / block_size)} blocks of kv_len={kv_len} with "
                f"block_size={block_size} (allowed: 0..{math.ceil(kv_len / block_size)})"
            )
        self._cache: dict[Any, Any] = {}

    # --------------------------------------------------------------------------- pattern
    def block_table(self, num_blocks: int, causal: bool) -> tuple[Tensor, Tensor]:
        """Key blocks of each query block: ``index (nb, K)`` and ``valid (nb, K)`` (CPU).

        Columns are the window blocks then the random blocks; invalid slots (outside the
        sequence, global blocks, or too few candidates) point at block 0 and are masked.
        """
        key = ("table", num_blocks, causal)
        if key in self._cache:
            return self._cache[key]
        nb, gb, wb = num_blocks, min(self.num_global_blocks, num_blocks), self.window_blocks
        qb = torch.arange(nb)[:, None]
        offsets = torch.arange(-wb, 1 if causal else wb + 1)[None, :]
        win = qb + offsets  # (nb, W)
        win_ok = (win >= gb) & (win < nb)
        kb = torch.arange(nb)[None, :]
        cand = (kb >= gb) & ((kb < qb - wb) if causal else ((kb - qb).abs() > wb))  # (nb, nb)
        r = min(self.num_random_blocks, nb)
        gen = torch.Generator().manual_seed(self.seed)
        draw = torch.rand(nb, nb, generator=gen).masked_fill(~cand, 2.0)
        val, rnd = torch.topk(draw, r, dim=1, largest=False)  # r distinct blocks per row
        index = torch.cat([win.clamp(0, nb - 1), rnd], dim=1)
        valid = torch.cat([win_ok, val < 2.0], dim=1)
        self._cache[key] = (index.where(valid, 0), valid)
        return self._cache[key]

    def effective_mask(self, n: int, causal: bool = False) -> Tensor:
        """Boolean ``(n, n)`` mask, True where query i attends key j (this seed, length n)."""
        b = self.block_size
        nb = math.ceil(n / b)
        index, valid = self.block_table(nb, causal)
        blocks = torch.zeros(nb, nb, dtype=torch.bool)  # (query block, key block)
        rows = torch.arange(nb)[:, None].expand_as(index)
        blocks[rows[valid], index[valid]] = True
        tok = torch.arange(n) // b
        glob = min(self.num_global_blocks * b, n)
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        allowed = blocks[tok[:, None], tok[None, :]] | (i < glob) | (j < glob)
        return allowed & (j <= i) if causal else allowed

    # --------------------------------------------------------------------------- forward
    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        n, bs = q.shape[-2], self.block_size
        nb = math.ceil(n / bs)
        glob = min(self.num_global_blocks * bs, n)  # global tokens
        index, mask = self._masks(n, causal, q.device)

        def gather(x: Tensor) -> Tensor:  # (B, H, N, E) -> (BH, nb, slots * bs, E)
            # One gather: [global blocks, window blocks, random blocks] of every query block.
            blocks = to_blocks(x, bs)  # (BH, nb, bs, E)
            return blocks[:, index].reshape(blocks.shape[0], nb, -1, x.shape[-1])

        scale = self.softmax_scale(q.shape[-1])
        return block_sparse_attention(q, gather(k), gather(v), mask, k, v, glob, causal, scale)

    def _masks(self, n: int, causal: bool, device: torch.device) -> tuple[Tensor, Tensor]:
        """Gather index ``(nb, G + K)`` and token mask ``(nb, bs, (G + K) * bs)``.

        The first ``G = ceil(glob / bs)`` gathered blocks of every query block are the global
        blocks, then its ``K`` window and random blocks (:meth:`block_table`).
        """
        key = ("masks", n, causal, str(device))
        if key in self._cache:
            return self._cache[key]
        bs = self.block_size
        nb = math.ceil(n / bs)
        glob = min(self.num_global_blocks * bs, n)
        gblocks = math.ceil(glob / bs)
        index, valid = self.block_table(nb, causal)  # window/random blocks never global ones
        index = torch.cat([torch.arange(gblocks).expand(nb, gblocks), index], dim=1)
        valid = torch.cat([torch.ones(nb, gblocks, dtype=torch.bool), valid], dim=1)
        i = torch.arange(nb * bs).view(nb, bs, 1)  # query token
        j = (index[:, None, :, None] * bs + torch.arange(bs)).reshape(nb, 1, -1)  # key token
        slot = valid.repeat_interleave(bs, dim=1)[:, None, :] & (j < n)
        slot[..., : gblocks * bs] &= j[..., : gblocks * bs] < glob
        if causal:
            slot = slot & (j <= i)
        out = (index.flatten().to(device), keep_dropped_rows(slot, i, n, glob).to(device))
        self._cache[key] = out
        return out

    # --------------------------------------------------------------------------- interface
    def not_supported_reasons(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, causal)
        if q.shape[-2] != k.shape[-2]:
            reasons[-1] += "; bigbird's block pattern is defined for self-attention only"
        return reasons

    def _slots(self, n: int, causal: bool) -> tuple[int, int, int]:
        """(padded query rows, key slots per row, global tokens) of the block computation."""
        bs = self.block_size
        nb = math.ceil(n / bs)
        window = self.window_blocks + 1 if causal else 2 * self.window_blocks + 1
        slots = (window + min(self.num_random_blocks, nb)) * bs
        glob = min(self.num_global_blocks * bs, n)
        return nb * bs, slots + glob, glob

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
        # Work actually done: every query block scores its gathered key blocks and the global
        # keys (masked slots included), plus full rows for the global queries.
        rows, slots, glob = self._slots(kv_len, causal)
        return block_sparse_flops(batch, heads, head_dim, rows, slots, glob, kv_len)

    def analytic_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4, kv_heads=None
    ) -> int:
        rows, slots, glob = self._slots(kv_len, causal)
        gathered = rows // self.block_size * slots  # key/value rows after the one gather
        # padded q, k, v and the output, the gathered k and v (the fused kernel keeps no
        # score matrix), plus the shared boolean block mask (1 byte per slot)
        per_head = 4 * rows * head_dim + 2 * gathered * head_dim
        mask = rows * slots // element_size
        repeated = repeat_bytes(batch, heads, kv_heads, kv_len, head_dim, element_size)
        return (batch * heads * per_head + mask) * element_size + repeated
