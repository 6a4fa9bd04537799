"""Sliding-window attention with global tokens (Beltagy et al. 2020, "Longformer").

Approximates softmax attention by letting each query see only the keys within a one-sided radius
``window`` of its position, plus ``num_global`` global tokens that see, and are seen by, every
position. Cost falls from O(Nq * Nk) to O(Nq * window). ``local`` is the same variant with no
global tokens. The function is defined by :func:`longformer_mask` (True where query i may attend
key j); every backend computes softmax attention restricted to that mask:

* positions are aligned to the **bottom right** (``variants.base``): query ``i`` sits at key
  position ``p = i + (Nk - Nq)``; it sees key ``j`` iff ``p - window <= j <= p + window``
  (causal: ``p - window <= j <= p``);
* global tokens: the first ``num_global`` keys are visible to every query, and the first
  ``num_global`` queries attend to every key (both subject to the causal mask). In
  cross-attention "global" therefore names key positions ``j < num_global`` and query positions
  ``i < num_global`` independently (clamped to each length);
* it is exact when the window covers every key (``window >= max(Nq, Nk)``).

Backends (``backend``):

* ``chunked`` (pure torch, runs everywhere, O(Nq * window) time and memory): query blocks with
  their contiguous key spans through one fused SDPA call (:mod:`variants._band`), global query
  rows with full attention.
* ``flex``: ``torch.nn.attention.flex_attention`` with a block mask, compiled with
  ``torch.compile`` (CPU needs a C++ compiler). Compilation and the block mask are built in
  :meth:`LongformerAttention.setup` and cached per shape; dynamo's recompile limit is raised and
  set to fail loudly, so a sweep never silently falls back to the unfused eager path.
* ``xformers``: ``memory_efficient_attention`` with ``LocalAttentionFromBottomRightMask`` (CUDA
  only; no global tokens).
* ``dense_mask``: ``F.scaled_dot_product_attention`` with the boolean ``(Nq, Nk)`` mask; the
  O(n^2) baseline.
* ``auto``: CPU -> chunked; CUDA -> flex when available, else xformers (no globals), else chunked.
  The choice is reported by :meth:`LongformerAttention.resolved_backend` and in ``config()``.

Costs follow the backend (``flops``, ``backward_flops``, ``analytic_mem_bytes``): ``chunked``
counts every slot of the blocks' key spans (masked ones included), the global rows and, on the
fused CPU path, the global keys scored apart (:class:`variants._blocksparse.GlobalKeys`: their
backward recomputes the scores and adds four products); elsewhere they sit in every stored key
block's slots. The fused path blocks its forward by 32 rows and its backward by 64 (window 256),
each counted in its own blocking. ``dense_mask`` counts the whole ``Nq x Nk`` matrix (the mask
skips nothing); ``flex`` every 128 x 128 tile of its block mask that holds a visible pair;
``xformers`` the band's pairs. Every backend is a fused kernel whose backward recomputes the
scores: 2.5x the forward (chunked: the forward in the backward's blocking). ``auto`` is counted
as the backend of the last call (``chunked``, its CPU choice, before any call).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from variants._band import block_size, chunked_attention, forward_block_size, geometry
from variants._blocksparse import block_sparse_flops, fused_available, global_key_flops
from variants._flex import FLEX_BLOCK, block_mask_pairs, flex_attention_cached, flex_reasons
from variants.base import (
    AttentionVariant,
    VariantConfigError,
    check_choice,
    check_nonneg_int,
    exact_attention_flops,
    recomputing_backward_flops,
)
from variants.xformers_attn import (
    memory_efficient_attention,
    xformers_dispatch_error,
    xformers_import_error,
)

BACKENDS = ("auto", "chunked", "flex", "xformers", "dense_mask")


def longformer_mask(
    q_len: int, kv_len: int, window: int, num_global: int, causal: bool, device=None
) -> Tensor:
    """Boolean ``(q_len, kv_len)`` mask, True where query i may attend key j (module docstring)."""
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(kv_len, device=device)[None, :]
    pos = i + (kv_len - q_len)  # query position in key coordinates (bottom-right)
    right = 0 if causal else window
    allowed = ((j >= pos - window) & (j <= pos + right)) | (j < num_global) | (i < num_global)
    return allowed & (j <= pos) if causal else allowed


def _xformers_reasons(q: Tensor, num_global: int) -> list[str]:
    reasons = []
    if num_global:
        reasons.append(f"xformers: num_global={num_global} not supported (local mask only)")
    if q.device.type != "cuda":
        reasons.append(f"xformers: needs a CUDA device (got {q.device.type})")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        reasons.append(f"xformers: dtype {q.dtype} not supported")
    if not reasons and (error := xformers_import_error()):
        reasons.append(f"xformers: {error}")
    return reasons


class LongformerAttention(AttentionVariant):
    """Sliding-window attention plus global tokens, with a choice of backends.

    Args:
        window: One-sided radius: query at position p sees keys ``p - window .. p + window``
            (causal: ``p - window .. p``). Default 256.
        num_global: Number of leading global tokens (e.g. a CLS token). Default 1.
        backend: One of auto, chunked, flex, xformers, dense_mask. Default ``auto``.
        kv_len: Key length the variant is built for; bounds ``num_global``.
        head_dim: Ignored.
        scale: Softmax scale; default ``1/sqrt(head_dim)``.
    """

    name: ClassVar[str] = "longformer"
    exact: ClassVar[bool] = False  # exact only when window >= max(q_len, kv_len)
    knob: ClassVar[str | None] = "window"
    #: every backend is a fused kernel (SDPA with a mask, flex, xformers): backward 2.5x
    recomputes_scores: ClassVar[bool] = True

    def __init__(
        self,
        window: int = 256,
        num_global: int = 1,
        backend: str = "auto",
        kv_len: int | None = None,
        head_dim: int | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim, scale=scale)
        self.window = check_nonneg_int(self.name, "window", window)
        self.num_global = check_nonneg_int(self.name, "num_global", num_global)
        if kv_len is not None and num_global > kv_len:
            raise VariantConfigError(
                f"{self.name}: num_global={num_global} exceeds kv_len={kv_len} "
                f"(allowed: 0..{kv_len})"
            )
        self.backend = check_choice(self.name, "backend", backend, BACKENDS)
        self._masks: dict[Any, Any] = {}
        self._last_backend: str | None = None
        #: whether the last chunked call ran the fused CPU kernel (global keys merged apart);
        #: assumed before any call (the CPU's path)
        self._fused = True

    # --------------------------------------------------------------------------- dispatch
    def resolved_backend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> str:
        """The backend that runs these inputs (``auto`` resolved)."""
        if self.backend != "auto":
            return self.backend
        if q.device.type == "cuda":
            if not flex_reasons(q):
                return "flex"
            if not self._xformers_problems(q, k, v, causal):
                return "xformers"
        return "chunked"

    def config(self) -> dict[str, Any]:
        out = super().config()
        out["resolved_backend"] = self._last_backend  # None until setup() or forward() ran
        return out

    def not_supported_reasons(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, causal)
        nq, nk = q.shape[-2], k.shape[-2]
        if not causal and self.num_global == 0 and nq - nk > self.window:
            reasons.append(
                f"{self.name}: q_len={nq} exceeds kv_len={nk} by more than window={self.window}"
                " with no global tokens: the first queries would see no key"
            )
        backend = self.resolved_backend(q, k, v, causal)
        if backend == "flex":
            reasons += flex_reasons(q)
        elif backend == "xformers":
            reasons += self._xformers_problems(q, k, v, causal)
        return reasons

    def _xformers_problems(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> list[str]:
        """Why the xformers backend cannot run these inputs, its dispatcher asked last."""
        reasons = _xformers_reasons(q, self.num_global)
        if not reasons:
            scale = self.softmax_scale(q.shape[-1])
            error = xformers_dispatch_error(q, k, v, scale, self._xformers_bias(causal))
            reasons += [error] if error else []
        return reasons

    def setup(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> None:
        """Build the masks (and for flex, compile the kernel) for inputs of this shape."""
        backend = self._last_backend = self.resolved_backend(q, k, v, causal)
        if backend == "flex":
            with torch.no_grad():
                self._flex(q, k, v, causal)
        elif backend in ("chunked", "dense_mask"):
            with torch.no_grad():
                self.forward(q[:1, :1], k[:1, :1], v[:1, :1], causal)

    # --------------------------------------------------------------------------- backends
    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        backend = self._last_backend = self.resolved_backend(q, k, v, causal)
        scale = self.softmax_scale(q.shape[-1])
        if backend == "chunked":
            self._fused = fused_available(q, k, v)
            return chunked_attention(
                q, k, v, self.window, self.num_global, causal, scale, self._masks
            )
        if backend == "dense_mask":
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=self._dense_mask(q, k, causal), scale=scale
            )
        if backend == "flex":
            return self._flex(q, k, v, causal)
        return self._xformers(q, k, v, causal)

    def _dense_mask(self, q: Tensor, k: Tensor, causal: bool) -> Tensor:
        key = ("dense", q.shape[-2], k.shape[-2], causal, str(q.device))
        if key not in self._masks:
            self._masks[key] = longformer_mask(
                q.shape[-2], k.shape[-2], self.window, self.num_global, causal, q.device
            )
        return self._masks[key]  # (Nq, Nk)

    def _flex(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        nq, nk = q.shape[-2], k.shape[-2]
        off, window, glob = nk - nq, self.window, self.num_global
        right = 0 if causal else window

        def mask_mod(b, h, q_idx, kv_idx):
            pos = q_idx + off
            ok = (kv_idx >= pos - window) & (kv_idx <= pos + right)
            ok = ok | (kv_idx < glob) | (q_idx < glob)
            return ok & (kv_idx <= pos) if causal else ok

        key = ("flex", nq, nk, causal, str(q.device))
        scale = self.softmax_scale(q.shape[-1])
        return flex_attention_cached(q, k, v, mask_mod, scale, self._masks, key, self.name)

    def _xformers_bias(self, causal: bool) -> Any:
        from xformers.ops import fmha

        return fmha.attn_bias.LocalAttentionFromBottomRightMask(
            window_left=self.window, window_right=0 if causal else self.window
        )

    def _xformers(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        bias = self._xformers_bias(causal)
        return memory_efficient_attention(q, k, v, bias, self.softmax_scale(q.shape[-1]))

    # --------------------------------------------------------------------------- cost models
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
        """The chunked backend's block layout (:func:`variants._band.geometry`) in the forward
        (or ``backward``), its query rows per block and the global keys merged apart from the
        slots: the fused CPU path
        blocks its forward by :func:`~variants._band.forward_block_size` and its backward by
        :func:`~variants._band.block_size`, global keys apart; elsewhere both passes by the
        latter, global keys in the slots."""
        window = min(self.window, q_len + kv_len)
        gk = min(self.num_global, kv_len)
        if not self._fused:
            block = block_size(window)
            return geometry(q_len, kv_len, window, causal, gk, block), block, 0
        block = block_size(window) if backward else forward_block_size(window)
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
        self, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool
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
        self, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool
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
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4
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


class LocalAttention(LongformerAttention):
    """Sliding-window attention without global tokens (``longformer`` with ``num_global=0``).

    Args:
        window: One-sided radius (see :class:`LongformerAttention`). Default 256.
        num_global: Global tokens; default 0.
        backend: One of auto, chunked, flex, xformers, dense_mask. Default ``auto``.
        kv_len, head_dim, scale: As in :class:`LongformerAttention`.
    """

    name: ClassVar[str] = "local"

    def __init__(
        self,
        window: int = 256,
        num_global: int = 0,
        backend: str = "auto",
        kv_len: int | None = None,
        head_dim: int | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__(window, num_global, backend, kv_len, head_dim, scale)
