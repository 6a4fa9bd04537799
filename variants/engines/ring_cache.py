"""The ring buffer of sliding-window attention's decode form (Longformer's, ``local``'s).

A causal query at position ``p`` sees keys ``p - window .. p`` and the ``num_global`` leading
keys (:func:`variants.engines.band_naive.band_mask`). The state keeps both in one buffer per
tensor, ``(B, Hkv, num_global + R, E)``: the global keys, then a ring of ``R = window +
MAX_STEP_TOKENS`` slots holding position ``p`` in slot ``num_global + p % R`` (room for a step's
tokens to be written before its first token reads the oldest key it needs). A step attends over
the whole buffer with a mask of the positions each slot holds: the state stops growing at ``R``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from variants.decode import MAX_STEP_TOKENS, DecodeState, check_prefill, check_step
from variants.grouped import group_size, grouped_queries, ungroup


def ring_positions(length: int, ring: int, device) -> Tensor:
    """Position held by each of ``ring`` slots after ``length`` tokens (negative: empty)."""
    s = torch.arange(ring, device=device)
    return length - 1 - torch.remainder(length - 1 - s, ring)


def window_mask(
    length: int, tokens: int, ring: int, window: int, num_global: int, group: int, device
) -> Tensor:
    """``(G * T, num_global + ring)`` mask of the last ``T`` of ``length`` tokens over the buffer:
    the global keys at or before each token, the ring's keys inside its window (global
    positions excluded from the ring: they are seen once, in their own slots)."""
    pos = torch.arange(length - tokens, length, device=device)[:, None]  # (T, 1)
    glob = torch.arange(num_global, device=device)[None, :] <= pos  # (T, num_global)
    held = ring_positions(length, ring, device)[None, :]  # (1, R)
    band = (held >= num_global) & (held >= pos - window) & (held <= pos)  # (T, R)
    return torch.cat([glob, band], dim=1).repeat(group, 1)


class WindowDecode:
    """Decode form of sliding-window attention with global keys: the ring buffer above.

    Needs ``window``, ``num_global``, ``softmax_scale`` and the variant's causal forward.
    """

    name: ClassVar[str]
    supports_decode: ClassVar[bool] = True
    window: int
    num_global: int

    def _ring_slots(self, tokens: int) -> int:
        """Ring slots of a state holding ``tokens`` tokens."""
        return min(tokens, self.window + MAX_STEP_TOKENS)

    @torch.no_grad()
    def prefill(self, q: Tensor, k: Tensor, v: Tensor, max_len: int | None = None):
        capacity = check_prefill(self.name, q, k, max_len)
        out = self(q, k, v, causal=True)  # (B, H, P, Dv)
        state = DecodeState(length=0)
        ring = self._ring_slots(capacity)
        for name, x in (("k", k), ("v", v)):  # (B, Hkv, num_global + R, E)
            state[name] = x.new_zeros(*x.shape[:2], self.num_global + ring, x.shape[-1])
        self._write(state, k, v, ring)
        return out, state

    def _write(self, state: DecodeState, k: Tensor, v: Tensor, ring: int) -> None:
        """Tokens ``state.length ..`` into the global slots and the ring (their last ``ring``)."""
        start, t, glob = state.length, k.shape[-2], self.num_global
        if start < glob:
            n = min(glob, start + t) - start
            state["k"][:, :, start : start + n].copy_(k[:, :, :n])
            state["v"][:, :, start : start + n].copy_(v[:, :, :n])
        keep = min(t, ring)
        pos = torch.arange(start + t - keep, start + t, device=k.device)
        slots = glob + torch.remainder(pos, ring)
        state["k"].index_copy_(2, slots, k[:, :, t - keep :])
        state["v"].index_copy_(2, slots, v[:, :, t - keep :])
        state.length = start + t

    def _grow(self, state: DecodeState, needed: int) -> int:
        """The ring's slots, grown (by doubling, up to its bound) when it holds fewer than
        ``needed`` tokens; a ring below its bound has never wrapped, so slot = position."""
        glob, bound = self.num_global, self.window + MAX_STEP_TOKENS
        ring = state["k"].shape[-2] - glob
        if ring >= min(needed, bound):
            return ring
        grown = min(bound, max(needed, 2 * ring))
        for name in ("k", "v"):  # zeros: empty slots are masked, and must not hold NaN
            old = state[name]
            state[name] = old.new_zeros(*old.shape[:2], glob + grown, old.shape[-1])
            state[name][:, :, : glob + ring].copy_(old)
        return grown

    @torch.no_grad()
    def step(self, q: Tensor, k: Tensor, v: Tensor, state: DecodeState):
        t, group = check_step(self.name, q, k, v, state), group_size(q, k)
        ring = self._grow(state, state.length + t)
        self._write(state, k, v, ring)
        mask = window_mask(
            state.length, t, ring, self.window, self.num_global, group, q.device
        )  # (G * T, num_global + R)
        out = F.scaled_dot_product_attention(
            grouped_queries(q, k.shape[1]),  # (B, Hkv, G * T, D)
            state["k"],
            state["v"],
            attn_mask=mask,
            scale=self.softmax_scale(q.shape[-1]),
        )
        return ungroup(out, q.shape[1]), state  # (B, H, T, Dv)

    def state_bytes(
        self, batch, kv_heads, context_len, head_dim, element_size=4, heads=None
    ) -> int:
        slots = self.num_global + self._ring_slots(context_len)
        return 2 * batch * kv_heads * slots * head_dim * element_size

    def step_read_bytes(
        self, batch, heads, kv_heads, context_len, head_dim, q_tokens=1, element_size=4
    ) -> int:
        # the whole buffer (global keys and the ring, keys and values) and the queries
        slots = self.num_global + self._ring_slots(context_len + q_tokens)
        return (2 * batch * kv_heads * slots + batch * heads * q_tokens) * head_dim * element_size
