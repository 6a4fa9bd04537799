"""Sliding-window attention with global tokens (Beltagy et al. 2020, "Longformer").

Approximates softmax attention by letting each query see only the keys within a one-sided radius
``window`` of its position, plus ``num_global`` global tokens that see, and are seen by, every
position: O(Nq * window) instead of O(Nq * Nk). ``local`` is the same variant with no global
tokens. The pattern is :func:`longformer_mask` (bottom-right aligned: query ``i`` sits at key
position ``p = i + Nk - Nq``; in cross-attention "global" names key positions ``j < num_global``
and query positions ``i < num_global`` independently); it is exact when the window covers every
key. Every backend computes softmax attention restricted to that mask:

* ``chunked`` (pure torch, everywhere): query blocks with their contiguous key spans through one
  fused SDPA call (:mod:`variants.engines.band`), global query rows with full attention.
* ``flex``: compiled ``flex_attention`` with a block mask (:mod:`variants.engines.flex`; the
  CPU needs a C++ compiler), compiled and masked in :meth:`LongformerAttention.setup`.
* ``xformers``: ``memory_efficient_attention`` with ``LocalAttentionFromBottomRightMask`` (CUDA
  only; no global tokens).
* ``dense_mask``: ``F.scaled_dot_product_attention`` with the boolean mask; the O(n^2) baseline.
* ``auto``: CPU -> chunked; CUDA -> flex when available, else xformers (no globals), else chunked
  (:meth:`LongformerAttention.resolved_backend`, recorded in ``config()``).

Costs follow the backend (:mod:`variants.longformer_costs`). Grouped heads are repeated to the
query heads (the blocks run as heads); decoding keeps a ring buffer of the window and the global
keys per KV head (:mod:`variants.engines.ring_cache`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from variants.base import AttentionVariant, VariantConfigError, check_choice, check_nonneg_int
from variants.engines.band import chunked_attention
from variants.engines.band_naive import band_mask
from variants.engines.blocksparse import fused_available
from variants.engines.flex import flex_attention_cached, flex_reasons
from variants.engines.ring_cache import WindowDecode
from variants.longformer_costs import LongformerCosts
from variants.tuning import check_auto, suspended
from variants.xformers_attn import (
    memory_efficient_attention,
    xformers_dispatch_error,
    xformers_import_error,
)

BACKENDS = ("auto", "chunked", "flex", "xformers", "dense_mask")

#: Boolean ``(q_len, kv_len)`` mask, True where query i may attend key j: the band engine's
#: pattern, defined beside its reference (:func:`variants.engines.band_naive.band_mask`).
longformer_mask = band_mask


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


class LongformerAttention(WindowDecode, LongformerCosts, AttentionVariant):
    """Sliding-window attention plus global tokens, with a choice of backends.

    Args:
        window: One-sided radius: query at position p sees keys ``p - window .. p + window``
            (causal: ``p - window .. p``). Default 256.
        num_global: Number of leading global tokens (e.g. a CLS token). Default 1.
        backend: One of auto, chunked, flex, xformers, dense_mask. Default ``auto``.
        kv_len: Key length the variant is built for; bounds ``num_global``.
        head_dim: Ignored.
        scale: Softmax scale; default ``1/sqrt(head_dim)``.
        block_size: ``chunked``: query rows per block of the backward (of both passes off the
            fused CPU path); None (default) chooses it by measurement on this machine
            (:mod:`variants.tuning`; ``min(64, max(16, window // 4))`` with tuning off).
        forward_block_size: ``chunked`` on the fused CPU path: query rows per block of the
            forward; None: tuned likewise (``min(32, block)`` with tuning off).
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
        block_size: int | None = None,
        forward_block_size: int | None = None,
    ) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim, scale=scale)
        self.window = check_nonneg_int(self.name, "window", window)
        self.block_size = check_auto(self.name, "block_size", block_size)
        self.forward_block_size = check_auto(self.name, "forward_block_size", forward_block_size)
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
            with torch.no_grad(), suspended():  # one head: a shape class of its own
                self.forward(q[:1, :1], k[:1, :1], v[:1, :1], causal)

    # --------------------------------------------------------------------------- backends
    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        backend = self._last_backend = self.resolved_backend(q, k, v, causal)
        scale = self.softmax_scale(q.shape[-1])
        if backend == "chunked":
            self._fused = fused_available(q, k, v)
            return self._chunked(q, k, v, causal, scale)
        if backend == "dense_mask":
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=self._dense_mask(q, k, causal), scale=scale
            )
        if backend == "flex":
            return self._flex(q, k, v, causal)
        return self._xformers(q, k, v, causal)

    def _chunked(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float) -> Tensor:
        """The chunked backend in the blockings of this call's shape class (set, tuned or
        default)."""

        def run(values: dict, q: Tensor, k: Tensor, v: Tensor, masks=None) -> Tensor:
            return chunked_attention(
                q, k, v, self.window, self.num_global, causal, scale,
                self._masks if masks is None else masks,
                values.get("block_size"), values.get("forward_block_size"),
            )  # fmt: skip

        trials: dict = {}  # the tuner's candidates keep their masks apart, dropped after it

        def probe(values: dict, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return run(values, q, k, v, trials)

        window = min(self.window, q.shape[-2] + k.shape[-2])
        extra = {"window": window, "num_global": self.num_global}
        knobs = self.band_knobs(window, self._fused)
        return run(self.engine_values(knobs, q, k, v, causal, probe, extra), q, k, v)

    def engine_tunable(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> bool:
        return self.resolved_backend(q, k, v, causal) == "chunked"

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


class LocalAttention(LongformerAttention):
    """Sliding-window attention without global tokens (``longformer`` with ``num_global=0``).

    Args:
        window: One-sided radius (see :class:`LongformerAttention`). Default 256.
        num_global: Global tokens; default 0.
        backend: One of auto, chunked, flex, xformers, dense_mask. Default ``auto``.
        kv_len, head_dim, scale, block_size, forward_block_size: As in
            :class:`LongformerAttention`.
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
        block_size: int | None = None,
        forward_block_size: int | None = None,
    ) -> None:
        super().__init__(
            window, num_global, backend, kv_len, head_dim, scale, block_size, forward_block_size
        )
