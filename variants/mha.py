"""A multi-head attention layer around any variant (W_Q, W_K, W_V, W_O projections).

``MultiHeadAttention(d_model, num_heads, variant)`` projects ``x`` (and, for cross-attention, a
separate ``context``) into heads, runs the variant on ``(B, H, N, D)`` tensors and projects back,
so that any variant can stand in for a model's attention: self-attention (``context=None``),
causal self-attention (``causal=True``) and cross-attention (``context`` of another length).
"""

from __future__ import annotations

import torch
from torch import Tensor

from variants.base import AttentionVariant, check_positive_int
from variants.registry import create


class MultiHeadAttention(torch.nn.Module):
    """Multi-head attention with a pluggable attention variant.

    Args:
        d_model: Model width; must be divisible by ``num_heads``.
        num_heads: Number of heads.
        variant: The attention to run per head, an :class:`AttentionVariant` instance or a
            registry name (then built with ``variant_params``).
        bias: Whether the projections have biases.
        short_conv: Kernel size of a causal depthwise convolution (then SiLU) on the q, k and v
            projections, as the linear-recurrent layers of flash-linear-attention and Zoology
            apply before their operator (it lets a token see its predecessors without attention);
            0 (default): none.
        variant_params: Parameters for ``variants.create`` when ``variant`` is a name.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        variant: AttentionVariant | str = "sdpa",
        bias: bool = True,
        short_conv: int = 0,
        **variant_params,
    ) -> None:
        super().__init__()
        check_positive_int("MultiHeadAttention", "d_model", d_model)
        check_positive_int("MultiHeadAttention", "num_heads", num_heads)
        if d_model % num_heads:
            raise ValueError(
                f"MultiHeadAttention: d_model={d_model} must be divisible by num_heads={num_heads}"
            )
        self.d_model, self.num_heads = d_model, num_heads
        self.head_dim = d_model // num_heads
        if isinstance(variant, str):
            variant_params.setdefault("head_dim", self.head_dim)
            variant = create(variant, **variant_params)
        self.attention = variant
        self.w_q = torch.nn.Linear(d_model, d_model, bias=bias)
        self.w_k = torch.nn.Linear(d_model, d_model, bias=bias)
        self.w_v = torch.nn.Linear(d_model, d_model, bias=bias)
        self.w_o = torch.nn.Linear(d_model, d_model, bias=bias)
        if isinstance(short_conv, bool) or not isinstance(short_conv, int) or short_conv < 0:
            raise ValueError(f"MultiHeadAttention: short_conv={short_conv!r} must be an int >= 0")
        self.short_conv = short_conv
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv1d(d_model, d_model, short_conv, groups=d_model, padding=short_conv - 1)
            for _ in range(3 if short_conv else 0)
        )

    def _conv(self, index: int, x: Tensor) -> Tensor:
        """The causal depthwise convolution ``index`` (q, k, v) and SiLU of ``x (B, N, C)``; ``x``
        itself without ``short_conv``."""
        if not self.short_conv:
            return x
        y = self.convs[index](x.transpose(1, 2))[..., : x.shape[1]]  # left context only
        return torch.nn.functional.silu(y.transpose(1, 2))

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, D)

    def forward(self, x: Tensor, context: Tensor | None = None, causal: bool = False) -> Tensor:
        """``x (B, Nq, C)``, optional ``context (B, Nk, C)`` -> ``(B, Nq, C)``; C = d_model."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (B, N, {self.d_model}); got {tuple(x.shape)}")
        context = x if context is None else context
        if (
            context.dim() != 3
            or context.shape[-1] != self.d_model
            or context.shape[0] != x.shape[0]
        ):
            raise ValueError(
                f"context must be ({x.shape[0]}, N, {self.d_model}); got {tuple(context.shape)}"
            )
        q = self._heads(self._conv(0, self.w_q(x)))  # (B, H, Nq, D)
        k = self._heads(self._conv(1, self.w_k(context)))  # (B, H, Nk, D)
        v = self._heads(self._conv(2, self.w_v(context)))  # (B, H, Nk, D)
        reasons = self.attention.not_supported_reasons(q, k, v, causal)
        if reasons:
            raise ValueError("; ".join(reasons))
        out = self.attention(q, k, v, causal=causal)  # (B, H, Nq, D)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.d_model)  # (B, Nq, C)
        return self.w_o(out)
