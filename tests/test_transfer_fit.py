"""Attention transfer's losses on small synthetic layers (no model): which loss runs, and that
the attention loss brings Hedgehog's attention weights towards softmax's."""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch
import torch.nn.functional as F

import variants
from harness.measure.config import ConfigError
from harness.tasks.transfer.config import TransferConfig
from harness.tasks.transfer.fit import LayerData, fit_layer, fit_objective
from variants.hedgehog import HedgehogAttention


def _layer(texts: int, seed: int, heads: int = 2, n: int = 8, d: int = 16) -> LayerData:
    """Self-similar queries and keys (q = k): softmax attention peaked on each token itself."""
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(texts, heads, n, d, generator=gen)
    v = torch.randn(texts, heads, n, d, generator=gen)
    return LayerData(x, x, v, F.scaled_dot_product_attention(x, x, v))


def _kl_to_softmax(module: HedgehogAttention, data: LayerData) -> float:
    """Mean over queries of KL(softmax weights || the module's weights)."""
    scores = data.q @ data.k.transpose(-2, -1) / math.sqrt(data.q.shape[-1])
    exact = scores.softmax(-1)
    with torch.no_grad():
        weights = module.attention_weights(data.q, data.k)
    return float((exact * (exact.log() - weights.log())).sum(-1).mean())


def test_the_attention_loss_is_the_default() -> None:
    assert TransferConfig().loss == "attention"
    defaults = {p.name: p.default for p in dataclasses.fields(TransferConfig)}
    assert defaults["loss"] == "attention"
    assert inspect.signature(fit_layer).parameters["loss"].default == "attention"
    hedgehog = HedgehogAttention(heads=2, head_dim=4)
    linformer = variants.create("linformer", k=4, kv_len=8, head_dim=4, init="learned")
    assert fit_objective(hedgehog, "attention") == "attention"
    assert fit_objective(hedgehog, "output") == "output"
    # no attention_weights to compare: the output loss, and the row says so
    assert fit_objective(linformer, "attention") == "output"
    with pytest.raises(ConfigError, match=r"^transfer\.loss='kl' must be one of attention"):
        TransferConfig(loss="kl")


def test_attention_loss_is_the_cross_entropy_to_the_softmax_weights() -> None:
    data = _layer(4, seed=3)
    module = HedgehogAttention(heads=2, head_dim=16)
    scores = data.q @ data.k.transpose(-2, -1) / 4.0
    with torch.no_grad():
        weights = module.attention_weights(data.q, data.k)
    expected = float(-(scores.softmax(-1) * weights.log()).sum(-1).mean())
    (first,) = fit_layer(module, data, steps=1, batch_size=4, lr=0.0, loss="attention")
    assert first == pytest.approx(expected, rel=1e-5)
    output = HedgehogAttention(heads=2, head_dim=16)
    (first,) = fit_layer(output, data, steps=1, batch_size=4, lr=0.0, loss="output")
    with torch.no_grad():
        out = output(data.q, data.k, data.v)
    relative = float((out - data.out).pow(2).sum() / data.out.pow(2).sum())
    assert first == pytest.approx(relative, rel=1e-5)


def test_fitting_brings_the_attention_weights_towards_softmax(one_thread) -> None:
    calibration, held_out = _layer(64, seed=0), _layer(32, seed=1)
    module = HedgehogAttention(heads=2, head_dim=16)
    before = _kl_to_softmax(module, held_out)
    losses = fit_layer(module, calibration, steps=150, batch_size=16, lr=0.05)
    after = _kl_to_softmax(module, held_out)
    assert losses[-1] < losses[0]
    assert after < 0.6 * before, (before, after)  # measured 0.88 -> 0.41
    assert module.trained and float(module.bias.detach().abs().max()) > 0.1  # the bias moved
