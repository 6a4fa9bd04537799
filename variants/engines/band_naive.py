"""Plain-PyTorch reference of :mod:`variants.engines.band`: dense softmax attention under the
band mask (a sliding window plus global tokens), ``O(Nq * Nk)``.

:func:`band_mask` is the definition of the pattern (Longformer's, ``variants.longformer``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from variants.engines.blocksparse_naive import masked_attention


def band_mask(
    q_len: int, kv_len: int, window: int, num_global: int, causal: bool, device=None
) -> Tensor:
    """Boolean ``(q_len, kv_len)``, True where query ``i`` may attend key ``j``.

    Query ``i`` sits at key position ``p = i + kv_len - q_len`` (bottom right) and sees keys
    ``p - window .. p + window`` (causal: ``p - window .. p``); the first ``num_global`` keys are
    seen by every query and the first ``num_global`` queries see every key, both subject to the
    causal mask.
    """
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(kv_len, device=device)[None, :]
    pos = i + (kv_len - q_len)  # query position in key coordinates (bottom-right)
    right = 0 if causal else window
    allowed = ((j >= pos - window) & (j <= pos + right)) | (j < num_global) | (i < num_global)
    return allowed & (j <= pos) if causal else allowed


def band_attention(
    q: Tensor, k: Tensor, v: Tensor, window: int, num_global: int, causal: bool,
    scale: float | None = None,
) -> Tensor:  # fmt: skip
    """What :func:`variants.engines.band.chunked_attention` computes: ``(B, H, Nq, Dv)``,
    differentiable, in the inputs' dtype."""
    nq, nk = q.shape[-2], k.shape[-2]
    allowed = band_mask(nq, nk, window, num_global, causal, q.device)
    return masked_attention(q, k, v, allowed, scale)
