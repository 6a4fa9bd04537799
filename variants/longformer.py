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

* ``chunked`` (pure torch, runs everywhere, O(Nq * window) time and memory): queries are cut into
  blocks of ``block`` rows; each block's keys are the contiguous span
  ``[start - window, start + block + window)``, taken as an overlapping ``unfold`` view of one
  padded key buffer (no copy), with the global keys in front of every span (band slots that hold
  a global key are masked so it is not counted twice). The blocks then go through the fused SDPA
  kernel of :mod:`variants._blocksparse` as if they were heads, and global query rows are
  computed with full attention.
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
"""

from __future__ import annotations

import math
import os
import shutil
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from variants._blocksparse import block_sparse_attention, block_sparse_flops, keep_dropped_rows
from variants.base import AttentionVariant, VariantConfigError, check_choice, check_nonneg_int
from variants.xformers_attn import memory_efficient_attention, xformers_import_error

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


def _block_size(window: int) -> int:
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
    block = _block_size(window)
    gq, gk = min(num_global, nq), min(num_global, nk)
    geo = _geometry(nq, nk, window, causal, gk, block)
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


def _geometry(nq: int, nk: int, window: int, causal: bool, gk: int, block: int) -> tuple:
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


# ------------------------------------------------------------------------------- flex helpers
_compiled_flex = None


def _flex_fn():
    """``flex_attention`` compiled once per process, with recompiles allowed and never silent."""
    global _compiled_flex
    if _compiled_flex is None:
        import torch._dynamo
        from torch.nn.attention.flex_attention import flex_attention

        cfg = torch._dynamo.config
        # A sweep compiles one graph per shape/window: allow many, and fail instead of
        # silently running eager flex_attention when the limit is hit anyway.
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 512))
        for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 8192))
        for name in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit"):
            if hasattr(cfg, name):
                setattr(cfg, name, True)
        cfg.suppress_errors = False
        _compiled_flex = torch.compile(flex_attention, dynamic=False, fullgraph=True)
    return _compiled_flex


def _flex_reasons(q: Tensor) -> list[str]:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except Exception as exc:  # any import failure means unusable
        return [f"flex: torch.nn.attention.flex_attention unavailable ({exc})"]
    if q.device.type == "cpu":
        cxx = os.environ.get("CXX", "g++")
        if shutil.which(cxx) is None and shutil.which("c++") is None:
            return [
                f"flex: compiling flex_attention on CPU needs a C++ compiler ({cxx} not found)"
            ]
    if q.dtype == torch.float64:
        return ["flex: float64 is not supported by the compiled flex_attention kernels"]
    return []


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

    # --------------------------------------------------------------------------- dispatch
    def resolved_backend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> str:
        """The backend that runs these inputs (``auto`` resolved)."""
        if self.backend != "auto":
            return self.backend
        if q.device.type == "cuda":
            if not _flex_reasons(q):
                return "flex"
            if not _xformers_reasons(q, self.num_global):
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
            reasons += _flex_reasons(q)
        elif backend == "xformers":
            reasons += _xformers_reasons(q, self.num_global)
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
        from torch.nn.attention.flex_attention import create_block_mask

        nq, nk = q.shape[-2], k.shape[-2]
        key = ("flex", nq, nk, causal, str(q.device))
        if key not in self._masks:
            off, window, glob = nk - nq, self.window, self.num_global
            right = 0 if causal else window

            def mask_mod(b, h, q_idx, kv_idx):
                pos = q_idx + off
                ok = (kv_idx >= pos - window) & (kv_idx <= pos + right)
                ok = ok | (kv_idx < glob) | (q_idx < glob)
                return ok & (kv_idx <= pos) if causal else ok

            self._masks[key] = create_block_mask(mask_mod, None, None, nq, nk, device=q.device)
        try:
            return _flex_fn()(q, k, v, block_mask=self._masks[key], scale=self.softmax_scale(
                q.shape[-1]))  # fmt: skip
        except Exception as exc:
            raise RuntimeError(
                f"{self.name}: backend flex failed to compile/run ({type(exc).__name__}: {exc})"
            ) from exc

    def _xformers(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        from xformers.ops import fmha

        bias = fmha.attn_bias.LocalAttentionFromBottomRightMask(
            window_left=self.window, window_right=0 if causal else self.window
        )
        return memory_efficient_attention(q, k, v, bias, self.softmax_scale(q.shape[-1]))

    # --------------------------------------------------------------------------- cost models
    def _work(self, q_len: int, kv_len: int, causal: bool) -> tuple[int, int, int]:
        """(rows computed by the block algorithm, key slots per row, global query rows)."""
        window = min(self.window, q_len + kv_len)
        block = _block_size(window)
        gk = min(self.num_global, kv_len)
        nqb, _, _, blocks, stride = _geometry(q_len, kv_len, window, causal, gk, block)
        return nqb * block, blocks * stride, min(self.num_global, q_len)

    def flops(
        self, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool
    ) -> int:
        # The work the chunked algorithm does: every query block scores its whole key span
        # (band + global keys, masked slots included), plus full rows for the global queries.
        rows, slots, gq = self._work(q_len, kv_len, causal)
        return block_sparse_flops(batch, heads, head_dim, rows, slots, gq, kv_len)

    def analytic_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4
    ) -> int:
        bh = batch * heads
        if self.backend == "dense_mask":  # bool mask, float bias and the n x n scores
            return q_len * kv_len * (1 + element_size) + bh * q_len * (kv_len + head_dim) * 4
        rows, slots, _ = self._work(q_len, kv_len, causal)
        # padded q, k, v (with the interleaved global keys) and the output; the fused kernel
        # keeps no score matrix; the boolean block mask is shared by batch and heads
        padded = rows + slots + kv_len * (1 + self.num_global)
        return bh * element_size * (3 * padded * head_dim + q_len * head_dim) + rows * slots


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
