"""The model-level number of a decode point: tokens per second of a stack of transformer blocks.

Each block is pre-norm: ``x + W_O attention(norm(x))`` through a
:class:`variants.MultiHeadAttention` around the point's variant, then ``x + MLP(norm(x))``
(``model_mlp_ratio`` x wider, GELU; none at ratio 0). Weights are random (seeded). Keys and
values are projected to ``kv_heads`` heads (the first ``kv_heads * head_dim`` rows of the
layer's ``W_K`` and ``W_V``). A generated token's input is the previous step's normalised
output; there is no vocabulary, so no embedding, LM head or sampling is timed.

The layers' states hold the point's prompt: where the model's heads have the point's head
dimension, each layer starts from a copy of the attention point's prefilled state (the prompt's
keys and values are then the point's inputs rather than the layer's projections, which random
weights would make just as random), so no model prefill is paid; otherwise each layer prefills
random Gaussian q, k, v of its shape, untimed. Steps are timed as the attention's
(:func:`harness.measure.timing.time_each`): ``warmup`` untimed, then ``steps`` timed.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.measure import timing
from harness.measure.failures import NonFinite, finite
from harness.measure.inputs import make_inputs
from harness.tasks.decode.config import DecodeConfig
from variants import MultiHeadAttention
from variants.base import AttentionVariant


class DecodeBlock(torch.nn.Module):
    """One pre-norm block: multi-head attention (grouped keys and values) and an MLP."""

    def __init__(
        self, width: int, heads: int, kv_heads: int, variant: AttentionVariant, mlp_ratio: int
    ) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, width // heads
        self.norm1 = torch.nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads, variant)
        self.norm2 = torch.nn.LayerNorm(width)
        hidden = mlp_ratio * width
        self.mlp = (
            torch.nn.Sequential(
                torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, width)
            )
            if mlp_ratio
            else None
        )

    def own_modules(self) -> list[torch.nn.Module]:
        """The block's layers without the (shared) attention variant."""
        attn = self.attn
        mods = [self.norm1, attn.w_q, attn.w_k, attn.w_v, attn.w_o, self.norm2, self.mlp]
        return [m for m in mods if m is not None]

    def used_parameters(self) -> int:
        """Parameters a step uses (of ``W_K`` and ``W_V`` only the grouped heads' rows)."""
        total = sum(p.numel() for m in self.own_modules() for p in m.parameters())
        attn, unused = self.attn, (self.heads - self.kv_heads) * self.head_dim
        per_row = attn.w_k.in_features + (attn.w_k.bias is not None)
        return total - 2 * unused * per_row

    def _split(self, x: Tensor, heads: int) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, heads, self.head_dim).transpose(1, 2)  # (B, heads, T, D)

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        """``x (B, T, C)`` -> ``(B, T, C)``, the state updated by the attention's step."""
        attn, kv_rows = self.attn, self.kv_heads * self.head_dim
        h = self.norm1(x)
        q = self._split(attn.w_q(h), self.heads)
        k = self._split(_first_rows(attn.w_k, h, kv_rows), self.kv_heads)
        v = self._split(_first_rows(attn.w_v, h, kv_rows), self.kv_heads)
        out, state = attn.attention.step(q, k, v, state)  # (B, H, T, D)
        x = x + attn.w_o(out.transpose(1, 2).reshape(x.shape))
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x, state


def _first_rows(layer: torch.nn.Linear, x: Tensor, rows: int) -> Tensor:
    """``layer(x)`` restricted to its first ``rows`` outputs (the grouped key/value heads)."""
    bias = None if layer.bias is None else layer.bias[:rows]
    return F.linear(x, layer.weight[:rows], bias)


def build_stack(
    variant: AttentionVariant, point: Any, cfg: DecodeConfig, width: int, dtype: torch.dtype
) -> tuple[list[DecodeBlock], torch.nn.LayerNorm]:
    """The seeded blocks and the final norm, in the point's dtype on its device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(point.seed)
        blocks = [
            DecodeBlock(width, point.heads, point.kv_heads, variant, cfg.model_mlp_ratio)
            for _ in range(cfg.model_depth)
        ]
        norm = torch.nn.LayerNorm(width)
    for module in [norm] + [m for block in blocks for m in block.own_modules()]:
        module.to(device=point.device, dtype=dtype).eval()  # the shared variant is left as is
    return blocks, norm


def layer_states(
    variant: AttentionVariant, point: Any, cfg: DecodeConfig, width: int, dtype, prefilled: Any
) -> list[Any]:
    """One state per layer holding the prompt (module docstring)."""
    head_dim = width // point.heads
    if head_dim == point.head_dim:
        return [copy.deepcopy(prefilled) for _ in range(cfg.model_depth)]
    n, cache = point.kv_len, cfg.cache_for(point.kv_len)
    states = []
    with torch.no_grad():
        for layer in range(cfg.model_depth):
            q, k, v = make_inputs(
                "gaussian",
                point.batch,
                point.heads,
                n,
                n,
                head_dim,
                dtype,
                point.device,
                point.seed + 1 + layer,
                kv_heads=point.kv_heads,
            )
            states.append(variant.prefill(q, k, v, max_len=cache)[1])
    return states


def model_width(point: Any, cfg: DecodeConfig) -> int:
    """The model's width: ``decode.model_width`` or ``heads * head_dim``."""
    return cfg.model_width or point.heads * point.head_dim


def measure_model(
    variant: AttentionVariant,
    point: Any,
    cfg: DecodeConfig,
    dtype: torch.dtype,
    states: list[Any],
    attention_step_ms: float,
) -> dict[str, Any]:
    """The ``model_*`` columns: step time (median, IQR), tokens per second, attention share."""
    width = model_width(point, cfg)
    blocks, norm = build_stack(variant, point, cfg, width, dtype)
    gen = torch.Generator(device="cpu").manual_seed(point.seed + 7)
    x0 = torch.randn(point.batch, cfg.q_tokens, width, generator=gen)
    holder = {"x": x0.to(device=point.device, dtype=dtype)}

    def step() -> None:
        x = holder["x"]
        for i, block in enumerate(blocks):
            x, states[i] = block.step(x, states[i])
        holder["x"] = norm(x)

    with torch.no_grad():
        for _ in range(cfg.warmup):
            step()
        times = timing.time_each([step] * cfg.steps, point.device)
    if not finite(holder["x"]):
        raise NonFinite("model step: output contains NaN/Inf")
    stats = timing.summarize(times)
    step_ms = stats["time_ms"]
    same_heads = width // point.heads == point.head_dim
    params = sum(block.used_parameters() for block in blocks)
    return {
        "model_width": width,
        "model_params": params,
        "model_step_ms": step_ms,
        "model_step_iqr_ms": stats["time_iqr_ms"],
        "model_tokens_per_s": point.batch * cfg.q_tokens / (step_ms * 1e-3),
        "model_attention_share": (
            cfg.model_depth * attention_step_ms / step_ms if same_heads else None
        ),
    }
