"""What the conformance kit runs: its shapes, the variants built for them, random inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

import variants
from harness.measure.factory import shape_kwargs
from variants.base import AttentionVariant

Factory = Callable[..., AttentionVariant]

#: Shapes the kit runs: (batch, heads, q_len, kv_len, head_dim). Lengths are not multiples of
#: common block sizes on purpose.
SELF_SHAPE = (2, 3, 67, 67, 16)
CROSS_SHAPE = (2, 3, 37, 83, 16)


def build(variant: str | Factory, kv_len: int, head_dim: int, seed: int = 0) -> AttentionVariant:
    """Build a variant for a shape, passing ``seed`` only to variants that accept it."""
    target = variants.get_class(variant) if isinstance(variant, str) else variant
    module = target(**shape_kwargs(target, kv_len, head_dim, seed))
    torch.manual_seed(seed)
    return module


def make_qkv(
    shape: tuple[int, int, int, int, int],
    seed: int = 0,
    dtype=torch.float32,
    device="cpu",
    requires_grad: bool = False,
    kv_heads: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Random (never zero) q, k, v for ``(batch, heads, q_len, kv_len, head_dim)``; k and v
    with ``kv_heads`` heads when given (grouped-query heads)."""
    b, h, nq, nk, d = shape
    hkv = h if kv_heads is None else kv_heads
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, hkv, nk, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, hkv, nk, d, generator=gen, dtype=torch.float64)
    out = tuple(t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (q, k, v))
    return out  # type: ignore[return-value]
