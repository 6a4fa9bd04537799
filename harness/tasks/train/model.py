"""The one tiny transformer every variant is trained in.

Token embedding plus learned positions, ``layers`` pre-norm blocks of
``variants.MultiHeadAttention`` (the variant plugged in) and an optional MLP, a final layer norm
and a linear head over the vocabulary. Width, depth and initialisation are the same for every
variant; only the attention inside differs, and a variant's own trainable parameters (Linformer's
projections with ``init="learned"``) are counted apart (:func:`parameter_counts`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from variants.base import AttentionVariant
from variants.mha import MultiHeadAttention


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the model.

    Args:
        vocab: Vocabulary size (embedding rows and head outputs).
        seq_len: Longest sequence (rows of the position table).
        width: Model width ``d_model`` (= heads * head_dim of the variant).
        heads: Attention heads.
        layers: Transformer blocks.
        mlp_ratio: Hidden width of the MLP as a multiple of ``width``; 0 means no MLP.
        short_conv: Kernel of the causal depthwise convolutions on q, k, v (0: none).
    """

    vocab: int
    seq_len: int
    width: int = 64
    heads: int = 1
    layers: int = 2
    mlp_ratio: int = 0
    short_conv: int = 0


class Block(torch.nn.Module):
    """Pre-norm residual block: ``x + attn(ln(x))`` then, if any, ``x + mlp(ln(x))``."""

    def __init__(self, cfg: ModelConfig, variant: AttentionVariant) -> None:
        super().__init__()
        self.ln_attn = torch.nn.LayerNorm(cfg.width)
        self.attn = MultiHeadAttention(cfg.width, cfg.heads, variant, short_conv=cfg.short_conv)
        self.mlp: torch.nn.Module | None = None
        if cfg.mlp_ratio:
            hidden = cfg.mlp_ratio * cfg.width
            self.ln_mlp = torch.nn.LayerNorm(cfg.width)
            self.mlp = torch.nn.Sequential(
                torch.nn.Linear(cfg.width, hidden),
                torch.nn.GELU(),
                torch.nn.Linear(hidden, cfg.width),
            )

    def forward(self, x: Tensor, causal: bool) -> Tensor:
        """``x (B, N, C)`` -> ``(B, N, C)``."""
        x = x + self.attn(self.ln_attn(x), causal=causal)
        if self.mlp is not None:
            x = x + self.mlp(self.ln_mlp(x))
        return x


class TinyTransformer(torch.nn.Module):
    """Embedding, learned positions, ``layers`` blocks, final norm and vocabulary head.

    Args:
        cfg: The model's shape.
        make_variant: ``make_variant(layer) -> AttentionVariant``, called once per block so that
            each block owns its variant (and its parameters or random features).
    """

    def __init__(self, cfg: ModelConfig, make_variant: Callable[[int], AttentionVariant]) -> None:
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"model: width={cfg.width} must be divisible by heads={cfg.heads}")
        self.cfg = cfg
        self.tokens = torch.nn.Embedding(cfg.vocab, cfg.width)
        self.positions = torch.nn.Embedding(cfg.seq_len, cfg.width)
        self.blocks = torch.nn.ModuleList(
            [Block(cfg, make_variant(layer)) for layer in range(cfg.layers)]
        )
        for variant in self.variants():  # per-head parameters exist before the optimiser
            variant.build_parameters(cfg.heads, cfg.width // cfg.heads)
        self.ln_out = torch.nn.LayerNorm(cfg.width)
        self.head = torch.nn.Linear(cfg.width, cfg.vocab, bias=False)
        own = {id(m) for variant in self.variants() for m in variant.modules()}
        for module in self.modules():
            if id(module) not in own:  # a variant's own layers keep their initialisation
                _init_weights(module)

    def forward(self, tokens: Tensor, causal: bool, where: Tensor | None = None) -> Tensor:
        """Logits of ``tokens (B, N)`` int64: ``(B, N, vocab)``, or ``(M, vocab)`` at ``where``.

        ``where`` is a boolean ``(B, N)`` mask of the positions that need logits; MQAR scores a
        few query positions per example, and the vocabulary head at every position would be the
        largest cost of a CPU training step.
        """
        n = tokens.shape[1]
        if n > self.cfg.seq_len:
            raise ValueError(f"model: sequence of {n} tokens exceeds seq_len={self.cfg.seq_len}")
        pos = torch.arange(n, device=tokens.device)
        x = self.tokens(tokens) + self.positions(pos)  # (B, N, C)
        for block in self.blocks:
            x = block(x, causal)
        if where is not None:
            x = x[where]  # (M, C)
        return self.head(self.ln_out(x))  # (B, N, vocab) or (M, vocab)

    def variants(self) -> list[AttentionVariant]:
        """The attention variant of each block."""
        return [block.attn.attention for block in self.blocks]


#: Standard deviation of every embedding and linear weight. GPT-2's 0.02 left exact attention on
#: MQAR's plateau (accuracy 1/pairs) far longer; the measurements are in docs/training.md.
INIT_STD = 0.1


def _init_weights(module: torch.nn.Module) -> None:
    """Normal weights of std :data:`INIT_STD`, zero biases; a variant's own layers keep theirs."""
    if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
        torch.nn.init.normal_(module.weight, std=INIT_STD)
        if getattr(module, "bias", None) is not None:
            torch.nn.init.zeros_(module.bias)


def _count(params) -> int:
    return sum(p.numel() for p in params if p.requires_grad)


def parameter_counts(model: TinyTransformer) -> dict[str, int]:
    """Trainable parameters: the whole model, the attention layers, the variants alone.

    Returns:
        ``n_params`` (everything), ``n_attention_params`` (the attention layers: W_Q, W_K,
        W_V, W_O and the variant's own) and ``n_variant_params`` (the variants' own parameters
        only, zero for most; the parity gap to exact attention).
    """
    attention = [p for block in model.blocks for p in block.attn.parameters()]
    own = [p for variant in model.variants() for p in variant.parameters()]
    return {
        "n_params": _count(model.parameters()),
        "n_attention_params": _count(attention),
        "n_variant_params": _count(own),
    }


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: matrices decay, vectors (biases, norms) do not (as nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
