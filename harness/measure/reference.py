"""The exact float64 softmax-attention reference every measurement and test compares with.

Computed independently of any variant (plain matmuls in float64 on the inputs' device, or on the
CPU when asked), with the suite's bottom-right causal convention. Never compare a variant with
itself: this module does not import ``variants``' implementations.

Grouped-query heads: k and v may have fewer heads than q (``Hkv`` dividing ``H``); query head
``h`` then reads key/value head ``h // (H // Hkv)``, and the reference repeats each key/value
head for its group (:func:`repeat_kv`) before computing exact attention.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def reference_mask(q_len: int, kv_len: int, device: torch.device | str | None = None) -> Tensor:
    """Bottom-right causal mask, True where allowed: key j visible to query i iff j <= i+Nk-Nq."""
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(kv_len, device=device)[None, :]
    return j <= i + (kv_len - q_len)


def repeat_kv(t: Tensor, heads: int) -> Tensor:
    """``t (B, Hkv, N, *)`` with each head repeated for its group: ``(B, heads, N, *)``.

    Query head ``h`` gets head ``h // (heads // Hkv)``; ``t`` is returned as it is when it has
    ``heads`` heads. Raises ``ValueError`` when ``Hkv`` does not divide ``heads``.
    """
    kv_heads = t.shape[1]
    if kv_heads == heads:
        return t
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"kv_heads={kv_heads} must divide heads={heads}")
    return t.repeat_interleave(heads // kv_heads, dim=1)


def reference_probs(
    q: Tensor,
    k: Tensor,
    causal: bool = False,
    scale: float | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Exact attention matrix ``softmax(q k^T * scale)`` in float64, ``(B, H, Nq, Nk)``.

    Args:
        q: ``(B, H, Nq, D)`` queries.
        k: ``(B, H, Nk, D)`` or ``(B, Hkv, Nk, D)`` keys (grouped heads, module docstring).
        causal: Apply the bottom-right causal mask.
        scale: Softmax scale; default ``1/sqrt(D)``.
        mask: Optional boolean ``(Nq, Nk)`` (or broadcastable) mask, True where allowed; combined
            with the causal mask. Used for masked references (sliding windows, padding).
    """
    return _softmax_probs(q.detach().double(), k.detach().double(), causal, scale, mask)


def _softmax_probs(
    q: Tensor, k: Tensor, causal: bool, scale: float | None, mask: Tensor | None = None
) -> Tensor:
    """``softmax(q k^T * scale)``, masked, in the dtype of q (differentiable)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    k = repeat_kv(k, q.shape[1])
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    allowed = None
    if causal:
        allowed = reference_mask(q.shape[-2], k.shape[-2], device=q.device)
    if mask is not None:
        allowed = mask if allowed is None else allowed & mask
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1)


def reference_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    scale: float | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Exact softmax attention in float64: ``softmax(q k^T * scale) v``, ``(B, H, Nq, Dv)``."""
    probs = reference_probs(q, k, causal, scale, mask)
    return torch.matmul(probs, repeat_kv(v.detach().double(), q.shape[1]))


def reference_attention_autograd(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: float | None = None
) -> Tensor:
    """Like :func:`reference_attention` but differentiable (inputs must be float64 leaves)."""
    return torch.matmul(_softmax_probs(q, k, causal, scale), repeat_kv(v, q.shape[1]))


def reference_grads(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    grad_out: Tensor,
    causal: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact float64 gradients ``(dq, dk, dv)`` of attention for upstream gradient ``grad_out``."""
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    out = reference_attention_autograd(q64, k64, v64, causal, scale)
    dq, dk, dv = torch.autograd.grad(out, (q64, k64, v64), grad_out.detach().double())
    return dq, dk, dv
