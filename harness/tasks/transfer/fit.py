"""Attention transfer's fitting: one variant instance per MiniLM layer, trained to mimic it.

Each of the model's 6 self-attention layers gets its own instance of the variant. The layer's
q, k, v on the calibration texts are captured (:func:`harness.minilm.capture.capture_qkv`)
and its exact output computed from them (softmax attention at the model's scale; every text
has the same length, so there is no padding). Only the instance's own ``nn.Parameter``s train,
the model is never touched. Two losses (:data:`LOSSES`), minimised with AdamW:

- ``attention`` (the Hedgehog paper's): the cross-entropy from the softmax attention weights to
  the variant's, ``-sum_j softmax_ij log weights_ij`` averaged over queries, for variants that
  expose their weights as ``attention_weights(q, k, causal)`` (Hedgehog's normalised feature
  products); a variant without them is fitted with the output loss (:func:`fit_objective`);
- ``output``: the squared error of the attention output relative to the output's squared norm
  (``||out - exact||^2 / ||exact||^2`` per batch, so one learning rate fits every layer).

A fixed number of steps per layer, mini-batches of texts in seeded shuffled epochs, progress
bars on a terminal. The fitted instances run in the model as a
:class:`harness.minilm.layerwise.LayerwiseAttention`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.measure.progress import progress
from harness.minilm.capture import capture_qkv
from harness.minilm.limits import HEAD_DIM, NUM_HEADS, NUM_LAYERS
from harness.minilm.model import encode
from harness.tasks.transfer.config import LOSSES
from variants.base import AttentionVariant, causal_mask


@dataclasses.dataclass
class LayerData:
    """One layer's attention inputs and exact output on some texts, each ``(N, H, L, D)``."""

    q: Tensor
    k: Tensor
    v: Tensor
    out: Tensor


def capture_layers(texts: list[str], kv_len: int, device: str = "cpu") -> list[LayerData]:
    """Every layer's q, k, v and exact attention output on ``texts``, each cut to ``kv_len``.

    Raises:
        ValueError: A text is shorter than ``kv_len`` tokens (it would need padding).
    """
    batch = encode(texts, kv_len)
    if not bool(batch["attention_mask"].all()):
        raise ValueError(f"transfer: every text needs at least {kv_len} tokens (no padding)")
    layers = []
    for layer in range(NUM_LAYERS):
        q, k, v = capture_qkv(batch, layer)  # (N, H, L, D) each
        # MiniLM's scaling is 1/sqrt(head_dim), sdpa's default
        out = F.scaled_dot_product_attention(q, k, v)
        layers.append(LayerData(*(t.to(device) for t in (q, k, v, out))))
    return layers


def materialize(variant: AttentionVariant, kv_len: int, device: str = "cpu") -> None:
    """Run one small forward so that parameters built on first use exist (Hedgehog's ``W``)."""
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(1, NUM_HEADS, kv_len, HEAD_DIM, generator=gen).to(device)
    with torch.no_grad():
        variant(probe, probe, probe)


def trainable_parameters(variant: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The variant's parameters that require gradients (what transfer fits)."""
    return [p for p in variant.parameters() if p.requires_grad]


def fit_objective(variant: AttentionVariant, loss: str) -> str:
    """The loss :func:`fit_layer` minimises for ``variant`` when ``loss`` is asked for:
    ``attention`` only for variants with ``attention_weights``, else ``output``."""
    if loss not in LOSSES:
        raise ValueError(f"transfer: loss={loss!r} must be one of {', '.join(LOSSES)}")
    has_weights = callable(getattr(variant, "attention_weights", None))
    return "attention" if loss == "attention" and has_weights else "output"


def _relative_mse(out: Tensor, exact: Tensor) -> Tensor:
    return (out - exact).pow(2).sum() / exact.pow(2).sum()


def _weights_cross_entropy(weights: Tensor, q: Tensor, k: Tensor, causal: bool) -> Tensor:
    """Mean over queries of ``-sum_j softmax_ij log weights_ij``."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Nq, Nk)
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), -math.inf)
    exact = scores.softmax(dim=-1)
    log_w = weights.clamp_min(torch.finfo(weights.dtype).tiny).log()
    return -(exact * log_w).sum(dim=-1).mean()


def fit_layer(
    variant: AttentionVariant,
    data: LayerData,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    loss: str = "attention",
    seed: int = 0,
    desc: str = "transfer",
) -> list[float]:
    """Fit ``variant``'s trainable parameters to one layer; returns the loss of every step.

    Sets ``variant.trained`` to True. See the module docstring for the loss.

    Args:
        variant: The layer's instance, materialised (:func:`materialize`).
        data: The layer's calibration inputs and exact outputs.
        steps: Optimiser steps.
        batch_size: Texts per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        loss: ``attention`` or ``output`` (module docstring; :func:`fit_objective` says which
            one a variant gets).
        seed: Seeds the order of the texts.
        desc: Label of the progress bar.
    """
    params = trainable_parameters(variant)
    if not params:
        raise ValueError(f"{variant.name}: no trainable parameters to fit")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    use_weights = fit_objective(variant, loss) == "attention"
    n = data.q.shape[0]
    size = min(batch_size, n)
    gen = torch.Generator().manual_seed(seed)
    epochs = math.ceil(steps * size / n)
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(epochs)])
    losses: list[float] = []
    variant.train()
    for step in progress(list(range(steps)), desc):
        idx = order[step * size : (step + 1) * size].to(data.q.device)
        q, k, v, exact = data.q[idx], data.k[idx], data.v[idx], data.out[idx]
        if use_weights:
            weights = variant.attention_weights(q, k, causal=False)  # type: ignore[operator]
            value = _weights_cross_entropy(weights, q, k, False)
        else:
            value = _relative_mse(variant(q, k, v), exact)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        losses.append(float(value.detach()))
    variant.eval()
    variant.trained = True
    return losses
