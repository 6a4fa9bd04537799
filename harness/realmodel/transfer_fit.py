"""Attention transfer's fitting: one variant per MiniLM layer, trained to mimic that layer.

Each of the model's 6 self-attention layers gets its own instance of the variant. The layer's
q, k, v on the calibration texts are captured (:func:`harness.realmodel.capture.capture_qkv`)
and its exact output computed from them (softmax attention at the model's scale; every text
has the same length, so there is no padding). Only the instance's own ``nn.Parameter``s train,
the model is never touched: AdamW on the squared error of the attention output relative to the
output's squared norm (``||out - exact||^2 / ||exact||^2`` per batch, so one learning rate fits
every layer), plus, for variants that expose ``attention_weights(q, k, causal)`` (Hedgehog's
normalised feature products), optionally ``ce_weight`` times the cross-entropy from the softmax
weights to the variant's (the Hedgehog paper's loss). A fixed number of steps per layer,
mini-batches of texts in seeded shuffled epochs, progress bars on a terminal.

:class:`LayerwiseAttention` puts the fitted instances into the model: a variant that holds one
instance per layer and runs the one of the layer the model is in, told by forward pre-hooks on
the layers' attention modules (:meth:`LayerwiseAttention.attached`). It goes through the
ordinary single-variant adapter (:func:`harness.realmodel.adapter.use_variant`), so padding,
masks and everything else behave as in the real-model experiment.

Public: :class:`LayerData`, :class:`LayerwiseAttention`, :func:`capture_layers`,
:func:`materialize`, :func:`trainable_parameters`, :func:`fit_layer`, :func:`save_fit`,
:func:`load_fit`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import variants
from harness.measure.point import progress
from harness.realmodel.capture import capture_qkv
from harness.realmodel.model import HEAD_DIM, NUM_HEADS, NUM_LAYERS, encode
from variants.base import AttentionVariant, causal_mask


@dataclasses.dataclass
class LayerData:
    """One layer's attention inputs and exact output on some texts, each ``(N, H, L, D)``."""

    q: Tensor
    k: Tensor
    v: Tensor
    out: Tensor


def capture_layers(texts: list[str], length: int, device: str = "cpu") -> list[LayerData]:
    """Every layer's q, k, v and exact attention output on ``texts``, each cut to ``length``.

    Raises:
        ValueError: A text is shorter than ``length`` tokens (it would need padding).
    """
    batch = encode(texts, length)
    if not bool(batch["attention_mask"].all()):
        raise ValueError(f"transfer: every text needs at least {length} tokens (no padding)")
    layers = []
    for layer in range(NUM_LAYERS):
        q, k, v = capture_qkv(batch, layer)  # (N, H, L, D) each
        # MiniLM's scaling is 1/sqrt(head_dim), sdpa's default
        out = F.scaled_dot_product_attention(q, k, v)
        layers.append(LayerData(*(t.to(device) for t in (q, k, v, out))))
    return layers


def materialize(variant: AttentionVariant, length: int, device: str = "cpu") -> None:
    """Run one small forward so that parameters built on first use exist (Hedgehog's ``W``)."""
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(1, NUM_HEADS, length, HEAD_DIM, generator=gen).to(device)
    with torch.no_grad():
        variant(probe, probe, probe)


def trainable_parameters(variant: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The variant's parameters that require gradients (what transfer fits)."""
    return [p for p in variant.parameters() if p.requires_grad]


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
    ce_weight: float = 0.0,
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
        ce_weight: Weight of the cross-entropy to the softmax weights (variants with
            ``attention_weights`` only; 0 turns it off).
        seed: Seeds the order of the texts.
        desc: Label of the progress bar.
    """
    params = trainable_parameters(variant)
    if not params:
        raise ValueError(f"{variant.name}: no trainable parameters to fit")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    use_ce = ce_weight > 0 and callable(getattr(variant, "attention_weights", None))
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
        loss = _relative_mse(variant(q, k, v), exact)
        if use_ce:
            weights = variant.attention_weights(q, k, causal=False)  # type: ignore[operator]
            loss = loss + ce_weight * _weights_cross_entropy(weights, q, k, False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    variant.eval()
    variant.trained = True
    return losses


class LayerwiseAttention(AttentionVariant):
    """One variant instance per transformer layer, run by the layer the model is in.

    Use it inside :meth:`attached` (which installs the hooks that tell it the layer), with the
    ordinary adapter: ``with lw.attached(model): embed(texts, lw)``. It describes itself as its
    first layer does (name, class flags, ``config()``).

    Args:
        layers: One instance per layer, in layer order.
    """

    name = "layerwise"

    def __init__(self, layers: Sequence[AttentionVariant]) -> None:
        super().__init__()
        if not layers:
            raise ValueError("LayerwiseAttention: no layers")
        self.layers = torch.nn.ModuleList(layers)
        first = layers[0]
        self.name = first.name
        for flag in ("exact", "supports_causal", "supports_cross", "randomized", "knob"):
            setattr(self, flag, getattr(first, flag))
        self.trained = all(layer.trained for layer in layers)
        self.current: int | None = None

    def _layer(self) -> AttentionVariant:
        if self.current is None:
            raise RuntimeError(
                f"{self.name}: per-layer attention runs inside LayerwiseAttention.attached(model)"
            )
        return self.layers[self.current]

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        return self._layer()(q, k, v, causal=causal)

    def not_supported_reasons(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> list[str]:
        layers = self.layers if self.current is None else [self._layer()]
        reasons: list[str] = []
        for layer in layers:
            reasons += [
                r for r in layer.not_supported_reasons(q, k, v, causal) if r not in reasons
            ]
        return reasons

    def flops(
        self, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool
    ) -> int:
        return self.layers[0].flops(batch, heads, q_len, kv_len, head_dim, causal)

    def analytic_mem_bytes(self, *args: Any, **kwargs: Any) -> int:
        return self.layers[0].analytic_mem_bytes(*args, **kwargs)

    def config(self) -> dict[str, Any]:
        return self.layers[0].config()

    @contextlib.contextmanager
    def attached(self, model: Any) -> Iterator[LayerwiseAttention]:
        """Hooks on ``model``'s attention modules that select each layer's instance."""
        blocks = model.encoder.layer
        if len(blocks) != len(self.layers):
            raise ValueError(
                f"{self.name}: {len(self.layers)} fitted layers for a model of {len(blocks)}"
            )

        def enter(index: int) -> Any:
            def hook(_module: torch.nn.Module, _args: Any) -> None:
                self.current = index

            return hook

        handles = [
            block.attention.self.register_forward_pre_hook(enter(i))
            for i, block in enumerate(blocks)
        ]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self.current = None


def save_fit(path: str | Path, fitted: LayerwiseAttention, **meta: Any) -> Path:
    """Write the fitted layers (their ``state_dict``s), the variant's name and parameters and
    ``meta`` (loss curves, texts, ...) to ``path`` with ``torch.save``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "variant": fitted.name,
        "params": fitted.config(),
        "state_dicts": [layer.state_dict() for layer in fitted.layers],
        **meta,
    }
    torch.save(blob, path)
    return path


def load_fit(path: str | Path, device: str = "cpu") -> LayerwiseAttention:
    """The fitted per-layer variant saved by :func:`save_fit` (``trained`` set), on ``device``.

    The variant is rebuilt by name through the registry (built-ins and installed plugins) with
    the saved parameters, and each layer's ``state_dict`` loaded into its own instance.
    """
    blob = torch.load(Path(path), map_location=device, weights_only=True)
    layers = []
    for state in blob["state_dicts"]:
        layer = variants.create(blob["variant"], **blob["params"])
        layer.load_state_dict(state)
        layer.trained = True
        layers.append(layer.to(device).eval())
    return LayerwiseAttention(layers)
