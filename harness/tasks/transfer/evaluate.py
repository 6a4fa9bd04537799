"""Transfer's held-out measures: the model with the per-layer instances against the exact model.

Measured as a realmodel point measures (:func:`harness.minilm.point.fidelity`, the retrieval
check of :func:`harness.minilm.retrieval.retrieval_columns`) on the held-out passages and pairs,
plus, per layer, the attention output's relative error on the held-out texts' exact q, k, v
(``layer_out_rel_err``, each layer on its own inputs: what the fit minimises).
"""

from __future__ import annotations

import json
import statistics
from typing import Any

import torch

from harness.minilm.embed import Embeddings, embed, exact_cached
from harness.minilm.layerwise import LayerwiseAttention, attached
from harness.minilm.point import fidelity
from harness.minilm.retrieval import (
    NonFiniteEmbeddings,
    embed_pairs,
    exact_pair_embeddings,
    retrieval_columns,
)
from harness.tasks.transfer.fit import LayerData, capture_layers
from harness.tasks.transfer.texts import TransferTexts


def layer_errors(fitted: LayerwiseAttention, held: list[LayerData], batch: int) -> list[float]:
    """Relative Frobenius error of each layer's attention output on its held-out inputs."""
    errors = []
    with torch.no_grad():
        for layer, data in zip(fitted.layers, held):
            num = den = 0.0
            for start in range(0, data.q.shape[0], batch):
                part = slice(start, start + batch)
                out = layer(data.q[part], data.k[part], data.v[part]).double()
                ref = data.out[part].double()
                num += float((out - ref).pow(2).sum())
                den += float(ref.pow(2).sum())
            errors.append((num / den) ** 0.5)
    return errors


def exact_measures(
    texts: TransferTexts, kv_len: int, batch_size: int, device: str
) -> tuple[Embeddings, list[LayerData]]:
    """The exact model on the held-out passages: embeddings and every layer's inputs and
    output (computed once per process for the same texts)."""

    def compute() -> tuple[Embeddings, list[LayerData]]:
        emb = embed(texts.evaluation, None, lengths=kv_len, device=device, batch_size=batch_size)
        return emb, capture_layers(texts.evaluation, kv_len, device)

    return exact_cached(("transfer", tuple(texts.evaluation), kv_len, batch_size, device), compute)


def held_out(
    fitted: LayerwiseAttention, texts: TransferTexts, kv_len: int, batch_size: int, device: str
) -> dict[str, Any]:
    """Every held-out measure of the model with ``fitted`` in its layers, with ``status``
    (``nan``, with the reason, when the held-out or retrieval embeddings have NaN/Inf)."""
    exact, held = exact_measures(texts, kv_len, batch_size, device)
    exact_pairs = exact_pair_embeddings(texts.pairs, device, batch_size) if texts.pairs else None
    errors = layer_errors(fitted, held, batch_size)
    out: dict[str, Any] = {
        "layer_out_rel_err": json.dumps(errors),
        "layer_out_rel_err_mean": statistics.fmean(errors),
    }
    with attached(fitted, device):
        approx = embed(texts.evaluation, fitted, lengths=kv_len, device=device,
                       batch_size=batch_size)  # fmt: skip
        if not bool(torch.isfinite(approx.embeddings).all()):
            return out | {"status": "nan", "reason": "variant model's embeddings contain NaN/Inf"}
        lengths = [kv_len] * len(texts.evaluation)
        out.update(status="ok", **fidelity(exact, approx, lengths, [kv_len]))
        if exact_pairs is not None:
            try:
                emb = embed_pairs(texts.pairs, fitted, device, batch_size)
                out.update(retrieval_columns(emb, exact_pairs))
            except NonFiniteEmbeddings as exc:
                return out | {"status": "nan", "reason": f"retrieval check: {exc}"}
    return out
