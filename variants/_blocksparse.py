"""Block-sparse attention through one fused SDPA call: query blocks as heads, plus global rows.

The kernel shared by Longformer's ``chunked`` backend and BigBird. Queries are cut into blocks of
``block`` rows (the last one zero-padded). The caller gives every query block its own ``S`` key
and value slots, ``(B*H, nqb, S, D)`` (Longformer: an overlapping view of one padded key buffer;
BigBird: one gather of key blocks), and a boolean ``(nqb, block, S)`` mask of the slots each row
sees. The blocks are then passed to ``F.scaled_dot_product_attention`` as if they were heads, so
the mask is an ordinary 4-d SDPA mask and the fused kernels (CPU flash, CUDA memory-efficient)
score, mask and normalise in tiles without materialising any block's score matrix. The first
``num_global`` queries are global (they attend to every key): a second SDPA call computes their
rows over all keys, which replace the block rows.

Work per head is ``rows * S`` score slots (masked slots included) plus ``num_global * Nk`` for the
global rows (:func:`block_sparse_flops`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def to_blocks(x: Tensor, block: int) -> Tensor:
    """``(B, H, N, E)`` -> ``(B*H, ceil(N / block), block, E)``, zero-padded at the end."""
    b, h, n, e = x.shape
    nblocks = -(-n // block)
    return F.pad(x, (0, 0, 0, nblocks * block - n)).view(b * h, nblocks, block, e)


def keep_dropped_rows(allowed: Tensor, rows: Tensor, q_len: int, num_global: int) -> Tensor:
    """``allowed`` with every slot of the rows that are discarded (padding, global queries) on.

    A row whose slots are all masked gives NaNs, which the softmax backward would carry into the
    key and value gradients even though the row itself is dropped; an unmasked row stays finite.

    Args:
        allowed: Boolean ``(nqb, block, S)`` slot mask.
        rows: Query index of each mask row, broadcastable to ``allowed``.
        q_len: Number of real queries (rows at or past it are padding).
        num_global: Global queries (their rows are replaced by full attention).
    """
    return allowed | (rows >= q_len) | (rows < num_global)


def block_sparse_attention(
    q: Tensor, k_slots: Tensor, v_slots: Tensor, mask: Tensor,
    k: Tensor, v: Tensor, num_global: int, causal: bool, scale: float,
) -> Tensor:  # fmt: skip
    """Each query block attends to its own key slots; global queries attend to every key.

    Args:
        q: ``(B, H, Nq, D)`` queries.
        k_slots: ``(B*H, nqb, S, D)`` key slots of every query block.
        v_slots: ``(B*H, nqb, S, Dv)`` value slots, in the same order.
        mask: Boolean ``(nqb, block, S)``, True where a row sees a slot (shared by batch and
            heads; see :func:`keep_dropped_rows`).
        k: ``(B, H, Nk, D)`` all keys, for the global rows.
        v: ``(B, H, Nk, Dv)`` all values.
        num_global: The first ``num_global`` queries attend to every key.
        causal: Global rows obey the bottom-right causal mask (the slot mask holds the rest).
        scale: Softmax scale.

    Returns:
        ``(B, H, Nq, Dv)``.
    """
    b, h, nq, _ = q.shape
    nk, dv = k.shape[-2], v.shape[-1]
    nqb, block = mask.shape[:2]
    out = F.scaled_dot_product_attention(
        to_blocks(q, block), k_slots, v_slots, attn_mask=mask[None], scale=scale
    )  # (B*H, nqb, block, Dv)
    out = out.reshape(b * h, nqb * block, dv)[:, :nq].view(b, h, nq, dv)
    if not num_global:
        return out
    rows = None
    if causal:  # only the global rows of the (Nq, Nk) causal mask, bottom-right aligned
        pos = torch.arange(num_global, device=q.device)[:, None] + (nk - nq)
        rows = torch.arange(nk, device=q.device) <= pos  # (num_global, Nk)
    g_out = F.scaled_dot_product_attention(
        q[:, :, :num_global], k, v, attn_mask=rows, scale=scale
    )  # (B, H, num_global, Dv)
    return torch.cat([g_out, out[:, :, num_global:]], dim=2)  # (B, H, Nq, Dv)


def block_sparse_flops(
    batch: int, heads: int, head_dim: int, rows: int, slots: int, num_global: int, kv_len: int
) -> int:
    """Forward FLOPs of :func:`block_sparse_attention`: every padded row scores all its slots
    (masked ones included) and multiplies by V (``2 * 2 * D`` per slot), plus the global rows
    over all ``kv_len`` keys."""
    return 4 * batch * heads * head_dim * (rows * slots + num_global * kv_len)
