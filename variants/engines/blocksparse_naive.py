"""Plain-PyTorch reference of :mod:`variants.engines.blocksparse`: dense masked softmax, one
query block at a time over its own key slots, then the global rows over every key.

Differentiable and in the inputs' dtype (float64 in the tests); no fused kernel, no padding.
"""

from __future__ import annotations

import torch
from torch import Tensor


def bottom_right_causal(q_len: int, kv_len: int, device=None) -> Tensor:
    """Boolean ``(q_len, kv_len)``: key ``j`` visible to query ``i`` iff
    ``j <= i + kv_len - q_len``."""
    i = torch.arange(q_len, device=device)[:, None]
    return torch.arange(kv_len, device=device)[None, :] <= i + (kv_len - q_len)


def masked_attention(
    q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float | None = None
) -> Tensor:
    """``softmax(q k^T * scale)`` over the ``allowed`` keys, times ``v``: ``(B, H, Nq, Dv)``.

    Args:
        q, k, v: ``(B, H, Nq, D)``, ``(B, H, Nk, D)``, ``(B, H, Nk, Dv)``.
        allowed: Boolean mask broadcastable to ``(B, H, Nq, Nk)``, True where a query sees a key
            (every row needs one).
        scale: Softmax scale; default ``1/sqrt(D)``.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Nq, Nk)
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


def block_sparse_attention(
    q: Tensor, k_slots: Tensor, v_slots: Tensor, mask: Tensor,
    k: Tensor, v: Tensor, num_global: int, causal: bool, scale: float,
) -> Tensor:  # fmt: skip
    """What :func:`variants.engines.blocksparse.block_sparse_attention` computes (same
    arguments): query block ``n`` (rows ``n * block ..``) attends to its slots
    ``k_slots[:, n]``, ``v_slots[:, n]`` where ``mask[n]`` allows; the first ``num_global``
    queries attend to every key (bottom-right causal when ``causal``)."""
    b, h, nq, d = q.shape
    block = mask.shape[1]
    parts = []
    for n, start in enumerate(range(0, nq, block)):
        rows = q[:, :, start : start + block]  # (B, H, r, D)
        ks = k_slots[:, n].reshape(b, h, -1, d)  # (B, H, S, D)
        vs = v_slots[:, n].reshape(b, h, -1, v.shape[-1])
        parts.append(masked_attention(rows, ks, vs, mask[n, : rows.shape[-2]], scale))
    out = torch.cat(parts, dim=2)  # (B, H, Nq, Dv)
    if not num_global:
        return out
    allowed = torch.ones(num_global, k.shape[-2], dtype=torch.bool, device=q.device)
    if causal:
        allowed = bottom_right_causal(nq, k.shape[-2], q.device)[:num_global]
    glob = masked_attention(q[:, :, :num_global], k, v, allowed, scale)
    return torch.cat([glob, out[:, :, num_global:]], dim=2)
