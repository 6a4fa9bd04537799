"""The recurrent (decode) form of causal kernel attention: linear, Performer and Hedgehog.

Causal kernel attention is an RNN (Katharopoulos et al. 2020): the state after ``L`` tokens is
``S = sum_{j < L} phi_k(k_j) [v_j, 1]^T``, ``(m, Dv + 1)`` per head (the ones column carries
the denominator), and a new query reads ``phi_q(q) S``. The state is constant in the context
length. Key logits (``key_is_log``, Performer's) become ``exp(logit - c)`` with ``c`` the
running max over the keys so far, kept beside ``S``; ``S`` is rescaled when ``c`` grows, as in
the streamed causal forward (:mod:`variants.engines.prefix_stream`). A step of ``T`` tokens
reads the state before it and the tokens' own keys (causal among themselves), then adds them.
Where the key map is the same for every head the state is one per KV head (grouped heads share
it); otherwise (Hedgehog's per-head maps) one per query head.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch
from torch import Tensor

from variants.decode import DecodeState, check_prefill, check_step
from variants.engines.kv_cache import step_mask
from variants.engines.prefix import FeatureMaps, with_ones_column
from variants.grouped import group_size, grouped_queries, repeat_kv, ungroup

#: Prompt tokens whose key features are made at once while prefill builds the state.
PREFILL_CHUNK = 1024


class RecurrentDecode(abc.ABC):
    """Decode form of the streamed kernel-attention variants: the running state above.

    Needs :meth:`decode_maps`, ``feature_count`` (:class:`~variants.engines.prefix_costs.
    StreamedKernelAttention`) and the variant's causal forward.
    """

    name: ClassVar[str]
    supports_decode: ClassVar[bool] = True
    #: True when every head applies the same key map: the state is then one per KV head.
    shared_key_map: ClassVar[bool] = True

    @abc.abstractmethod
    def decode_maps(self, q: Tensor) -> tuple[FeatureMaps, tuple[Tensor, ...]]:
        """The feature maps and their parameters for queries like ``q`` (those of the causal
        forward)."""

    def keys_are_logits(self) -> bool:
        """Whether the key map returns logits (a running max is then part of the state)."""
        return False

    def feature_parameters(self, heads: int, head_dim: int) -> int:
        """Elements of the feature maps' parameters a step reads (0 for a fixed map)."""
        return 0

    def state_heads(self, kv_heads: int) -> int:
        """Heads of the state: one per KV head for a shared key map."""
        return kv_heads

    # -------------------------------------------------------------------------- the state
    def _state_kv(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """k, v as the state's heads: repeated to the query heads for per-head key maps."""
        if self.shared_key_map:
            return k, v
        group = group_size(q, k)
        return repeat_kv(k, group), repeat_kv(v, group)

    def _keys(self, state: DecodeState, maps: FeatureMaps, params, k: Tensor) -> Tensor:
        """Key features ``(B, Hs, T, m)``; logits are shifted by the running max, ``S``
        rescaled in place where the max grows."""
        phi = maps.key(k, *params)
        if not maps.key_is_log:
            return phi
        top = state["key_max"]  # (B, Hs, 1, 1)
        new = torch.maximum(top, phi.amax(dim=(-2, -1), keepdim=True))
        state["kv"].mul_(torch.exp(top - new))
        top.copy_(new)
        return phi.sub_(new).exp_()

    @torch.no_grad()
    def prefill(self, q: Tensor, k: Tensor, v: Tensor, max_len: int | None = None):
        check_prefill(self.name, q, k, max_len)  # the state is constant: max_len is moot
        out = self(q, k, v, causal=True)  # (B, H, P, Dv)
        maps, params = self.decode_maps(q)
        ks, vs = self._state_kv(q, k, v)  # (B, Hs, P, *)
        b, hs, prompt, d = ks.shape
        m = self.feature_count(d)
        state = DecodeState({"kv": v.new_zeros(b, hs, m, vs.shape[-1] + 1)}, prompt)
        if maps.key_is_log:
            state["key_max"] = v.new_full((b, hs, 1, 1), -math.inf)
        for start in range(0, prompt, PREFILL_CHUNK):
            part = slice(start, start + PREFILL_CHUNK)
            phi_k = self._keys(state, maps, params, ks[:, :, part])  # (B, Hs, c, m)
            state["kv"].add_(phi_k.transpose(-2, -1) @ with_ones_column(vs[:, :, part]))
        return out, state

    @torch.no_grad()
    def step(self, q: Tensor, k: Tensor, v: Tensor, state: DecodeState):
        t, heads = check_step(self.name, q, k, v, state), q.shape[1]
        maps, params = self.decode_maps(q)
        ks, vs = self._state_kv(q, k, v)  # (B, Hs, T, *)
        hs = ks.shape[1]
        phi_q = grouped_queries(maps.query(q, *params), hs)  # (B, Hs, G * T, m)
        phi_k = self._keys(state, maps, params, ks)  # (B, Hs, T, m), S rescaled to its max
        values = with_ones_column(vs)  # (B, Hs, T, Dv + 1)
        scores = phi_q @ phi_k.transpose(-2, -1)  # (B, Hs, G * T, T)
        mask = step_mask(t, t, heads // hs, q.device)  # causal among the step's tokens
        if mask is not None:
            scores = scores.masked_fill_(~mask, 0.0)
        out = torch.baddbmm(
            (scores @ values).flatten(0, 1), phi_q.flatten(0, 1), state["kv"].flatten(0, 1)
        ).view(*scores.shape[:-1], values.shape[-1])  # (B, Hs, G * T, Dv + 1)
        state["kv"].add_(phi_k.transpose(-2, -1) @ values)
        state.length += t
        tiny = torch.finfo(out.dtype).tiny
        return ungroup(out[..., :-1] / out[..., -1:].clamp_min(tiny), heads), state

    # ------------------------------------------------------------------------ cost models
    def state_bytes(
        self, batch, kv_heads, context_len, head_dim, element_size=4, heads=None
    ) -> int:
        per_head = self.feature_count(head_dim) * (head_dim + 1) + self.keys_are_logits()
        return batch * self.state_heads(kv_heads) * per_head * element_size

    def step_read_bytes(
        self, batch, heads, kv_heads, context_len, head_dim, q_tokens=1, element_size=4
    ) -> int:
        # the state, the new tokens' q, k, v and the feature maps' parameters
        tokens = batch * q_tokens * (heads + 2 * kv_heads) * head_dim
        params = self.feature_parameters(heads, head_dim)
        state = self.state_bytes(batch, kv_heads, context_len, head_dim, element_size)
        return state + (tokens + params) * element_size
