"""The KV cache of exact attention's decode form: every token's key and value, preallocated.

:func:`new_buffer` allocates ``(B, Hkv, slots, E)`` once (``max_len`` slots); a step writes its
tokens in place (:func:`write`) and attends over the filled part, a view: nothing is
concatenated per token. A cache allocated without ``max_len`` grows by doubling
(:func:`ensure_slots`). :class:`ExactCacheDecode` is the decode form of ``full`` and ``sdpa``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from variants.decode import DecodeState, check_prefill, check_step
from variants.grouped import group_size, grouped_queries, ungroup


def new_buffer(x: Tensor, slots: int) -> Tensor:
    """``(B, Hkv, slots, E)`` uninitialised, ``x (B, Hkv, P, E)`` written into its first slots."""
    buf = x.new_empty(*x.shape[:2], slots, x.shape[-1])
    buf[:, :, : x.shape[-2]].copy_(x)
    return buf


def ensure_slots(state: DecodeState, names: Sequence[str], needed: int) -> None:
    """Grow the buffers ``names`` to ``max(needed, 2 * slots)`` slots when they hold fewer than
    ``needed`` (doubling: amortised O(1) per token), keeping the ``state.length`` filled ones."""
    slots = state[names[0]].shape[-2]
    if slots >= needed:
        return
    for name in names:
        state[name] = new_buffer(state[name][:, :, : state.length], max(needed, 2 * slots))


def write(buf: Tensor, x: Tensor, start: int) -> None:
    """``x (B, Hkv, T, E)`` into slots ``start .. start + T - 1`` of ``buf``, in place."""
    buf[:, :, start : start + x.shape[-2]].copy_(x)


def step_mask(tokens: int, keys: int, group: int, device) -> Tensor | None:
    """Bottom-right causal ``(G * T, keys)`` mask of ``T`` new tokens, rows grouped as
    :func:`variants.grouped.grouped_queries` lays them; None for one token (it sees every key)."""
    if tokens == 1:
        return None
    t = torch.arange(tokens, device=device)[:, None]
    j = torch.arange(keys, device=device)[None, :]
    return (j <= t + (keys - tokens)).repeat(group, 1)  # (G * T, keys)


class ExactCacheDecode(abc.ABC):
    """Decode form of exact attention: a KV cache of every token, read whole by each step.

    Needs the variant's causal forward (the module's call) and :meth:`cached_attention`, the
    step's attention of grouped queries over the cache.
    """

    name: ClassVar[str]
    supports_decode: ClassVar[bool] = True

    @abc.abstractmethod
    def cached_attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """``q (B, Hkv, G T, D)`` over ``k``, ``v (B, Hkv, L, *)`` with ``mask (G T, L)``."""

    @torch.no_grad()
    def prefill(self, q: Tensor, k: Tensor, v: Tensor, max_len: int | None = None):
        slots = check_prefill(self.name, q, k, max_len)
        out = self(q, k, v, causal=True)  # (B, H, P, Dv)
        return out, DecodeState(
            {"k": new_buffer(k, slots), "v": new_buffer(v, slots)}, k.shape[-2]
        )

    @torch.no_grad()
    def step(self, q: Tensor, k: Tensor, v: Tensor, state: DecodeState):
        t, group = check_step(self.name, q, k, v, state), group_size(q, k)
        length = state.length + t
        ensure_slots(state, ("k", "v"), length)
        write(state["k"], k, state.length)
        write(state["v"], v, state.length)
        state.length = length
        keys, values = state["k"][:, :, :length], state["v"][:, :, :length]  # views
        mask = step_mask(t, length, group, q.device)
        out = self.cached_attention(grouped_queries(q, k.shape[1]), keys, values, mask)
        return ungroup(out, q.shape[1]), state  # (B, H, T, Dv)

    def state_bytes(
        self, batch, kv_heads, context_len, head_dim, element_size=4, heads=None
    ) -> int:
        return 2 * batch * kv_heads * context_len * head_dim * element_size

    def step_read_bytes(
        self, batch, heads, kv_heads, context_len, head_dim, q_tokens=1, element_size=4
    ) -> int:
        # the cache with the new tokens (keys and values) and the queries
        cache = 2 * batch * kv_heads * (context_len + q_tokens) * head_dim
        return (cache + batch * heads * q_tokens * head_dim) * element_size
