"""Attention transfer: fit a learnable variant to MiniLM's softmax attention, measure it held out.

One point of the ``transfer`` task takes a variant with ``torch.nn.Parameter``s (Linformer with
``init=learned``, Performer with a learnable projection, Hedgehog, any plugin), builds one
instance per MiniLM layer, and measures the model with them twice on held-out text: untrained
(``stage`` = ``before``; the same instance the real-model experiment would drop in) and after
fitting each instance to its layer on calibration text (``stage`` = ``after``;
:mod:`harness.realmodel.transfer_fit`). The model itself is frozen throughout.

Texts (:mod:`harness.realmodel.transfer_texts`): calibration and evaluation passages come from
disjoint pydoc topics, repeated paragraphs removed from the evaluation side; every text is cut
to exactly ``length`` tokens (one fixed length, no padding, no buckets: Linformer's ``k x
kv_len`` projections are built for that length). Retrieval pairs are held-out pairs of at most
``length`` tokens.

Measures, as the real-model experiment takes them (:mod:`harness.realmodel.experiment`,
:mod:`harness.realmodel.retrieval`): sentence-embedding cosine to the exact model and the
per-layer hidden-state error on the held-out passages, the retrieval check on the held-out
pairs (top-1 with its Wilson interval, agreement and the paired comparison with exact
attention); and, per layer, the attention output's relative error on the held-out texts'
exact q, k, v (``layer_out_rel_err``, each layer on its own inputs: what the fit minimises).

A variant without trainable parameters is one ``unsupported`` row ("not transferable: no
trainable parameters"). With ``out_dir`` (and ``transfer.save``) the fit is saved there as
``transfer_<variant>_<knob value>.pt`` (:func:`harness.realmodel.transfer_fit.save_fit`;
:func:`harness.realmodel.transfer_fit.load_fit` reads it back).

Public: :data:`TRANSFER_DEFAULTS`, :func:`transfer_config`, :func:`measure_transfer_point`.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from harness.measure.factory import describe
from harness.realmodel.adapter import VariantUnsupported
from harness.realmodel.embed import Embeddings, embed
from harness.realmodel.experiment import _base_row, _fidelity, _unsupported_reasons
from harness.realmodel.model import MAX_TOKENS, load_model
from harness.realmodel.retrieval import _embed_by_length, _ranks, _statistics
from harness.realmodel.transfer_fit import (
    LayerData,
    LayerwiseAttention,
    capture_layers,
    fit_layer,
    materialize,
    save_fit,
    trainable_parameters,
)
from harness.realmodel.transfer_texts import TransferTexts, transfer_texts
from variants.base import AttentionVariant, check_int

#: Defaults of the ``transfer:`` config block (conf/experiment/transfer.yaml documents them).
TRANSFER_DEFAULTS: dict[str, Any] = {
    "length": None,  # tokens of every text ([CLS], [SEP] included); null: the point's kv_len
    "calibration_texts": 32,  # passages of the calibration topics the layers are fitted on
    "eval_texts": 16,  # held-out passages (embedding cosine, hidden-state and layer errors)
    "retrieval_pairs": 200,  # held-out retrieval pairs; 0 turns the check off
    "calibration_every": 3,  # every n-th pydoc topic (sorted) calibrates, the rest evaluate
    "steps": 200,  # optimiser steps per layer
    "batch_size": 8,  # calibration texts per step
    "lr": 0.01,  # AdamW learning rate
    "weight_decay": 0.0,  # AdamW weight decay (pulls parameters to 0, not to their init)
    "ce_weight": 0.0,  # cross-entropy to the softmax weights (variants with attention_weights)
    "eval_batch_size": 16,  # texts per forward pass when measuring
    "save": True,  # write transfer_<variant>_<knob>.pt beside the rows (when out_dir is given)
    # constructor settings that give a variant trainable parameters, applied before fitting
    "learnable": {"linformer": {"init": "learned"}, "performer": {"learnable_projection": True}},
}

_INTS = {"calibration_texts": 1, "eval_texts": 1, "retrieval_pairs": 0,
         "calibration_every": 2, "steps": 1, "batch_size": 1, "eval_batch_size": 1}  # fmt: skip

#: The exact model's measures per (device, texts): the same for every point of a sweep job.
_exact_cache: dict[tuple, tuple[Embeddings, torch.Tensor | None, list[LayerData]]] = {}


def transfer_config(point: Mapping[str, Any]) -> dict[str, Any]:
    """The point's ``transfer`` block over :data:`TRANSFER_DEFAULTS`, checked.

    Raises:
        ValueError: An unknown key or a value out of range (the message names it).
    """
    given = dict(point.get("transfer") or {})
    if set(given) - set(TRANSFER_DEFAULTS):
        unknown, allowed = sorted(set(given) - set(TRANSFER_DEFAULTS)), list(TRANSFER_DEFAULTS)
        raise ValueError(f"transfer: unknown key(s) {unknown}; allowed: {allowed}")
    cfg = TRANSFER_DEFAULTS | {k: v for k, v in given.items() if v is not None}
    if cfg["length"] is None:
        cfg["length"] = point.get("kv_len") or point.get("q_len")
    check_int("transfer", "length", cfg["length"], low=2, high=MAX_TOKENS, error=ValueError)
    for field, low in _INTS.items():
        check_int("transfer", field, cfg[field], low=low, error=ValueError)
    for field in ("lr", "weight_decay", "ce_weight"):
        value = cfg[field]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"transfer: {field}={value!r} must be a number >= 0")
    if not cfg["lr"] > 0:
        raise ValueError(f"transfer: lr={cfg['lr']!r} must be > 0")
    if not isinstance(cfg["save"], bool):
        raise ValueError(f"transfer: save={cfg['save']!r} must be true or false")
    if not isinstance(cfg["learnable"], Mapping) or not all(
        isinstance(v, Mapping) for v in cfg["learnable"].values()
    ):
        raise ValueError("transfer: learnable must map variant names to constructor settings")
    return cfg


def _build(
    factory: Callable[[int], AttentionVariant], seed: int, cfg: dict[str, Any], device: str
) -> AttentionVariant:
    """The point's variant with ``cfg["learnable"]``'s settings for its name applied."""
    variant = factory(seed)
    extra = cfg["learnable"].get(variant.name)
    if extra:  # rebuilt from its own constructor parameters, plus the learnable settings
        variant = type(variant)(**(variant.config() | dict(extra)))
    return variant.to(device).eval()


def _layer_errors(fitted: LayerwiseAttention, held: list[LayerData], batch: int) -> list[float]:
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


def _retrieval(
    fitted: LayerwiseAttention, pairs: list[tuple[str, str]], exact: torch.Tensor, **run: Any
) -> dict[str, Any]:
    """The retrieval check's columns on the held-out pairs (``exact``: exact embeddings)."""
    n = len(pairs)
    emb = _embed_by_length([q for q, _ in pairs] + [d for _, d in pairs], fitted, **run)
    ranks, exact_ranks = _ranks(emb[:n], emb[n:]), _ranks(exact[:n], exact[n:])
    exact_stats = _statistics(exact_ranks, exact_ranks)
    best = (emb[:n] @ emb[n:].T).argmax(1)
    exact_best = (exact[:n] @ exact[n:].T).argmax(1)
    out: dict[str, Any] = {f"retrieval_{k}": v for k, v in _statistics(ranks, exact_ranks).items()}
    out.update(
        retrieval_pairs=n,
        retrieval_exact_top1=exact_stats["top1"],
        retrieval_exact_top1_lo=exact_stats["top1_lo"],
        retrieval_exact_top1_hi=exact_stats["top1_hi"],
        retrieval_mean_rank=float(ranks.double().mean()),
        retrieval_agree_top1=float((best == exact_best).double().mean()),
    )
    return out


def _exact(texts: TransferTexts, cfg: dict[str, Any], device: str) -> tuple:
    """The exact model on the held-out texts: embeddings, pair embeddings, layer data."""
    key = (device, cfg["length"], cfg["eval_batch_size"], tuple(texts.evaluation),
           tuple(texts.pairs))  # fmt: skip
    if key not in _exact_cache:
        run = {"device": device, "batch_size": cfg["eval_batch_size"]}
        emb = embed(texts.evaluation, None, lengths=cfg["length"], **run)
        flat = [q for q, _ in texts.pairs] + [d for _, d in texts.pairs]
        pairs = _embed_by_length(flat, None, **run) if texts.pairs else None
        _exact_cache[key] = (emb, pairs, capture_layers(texts.evaluation, cfg["length"], device))
    return _exact_cache[key]


def _measure(
    fitted: LayerwiseAttention, texts: TransferTexts, cfg: dict[str, Any], device: str
) -> dict[str, Any]:
    """Every held-out measure of the model with ``fitted`` in its layers."""
    exact, exact_pairs, held = _exact(texts, cfg, device)
    errors = _layer_errors(fitted, held, cfg["eval_batch_size"])
    out: dict[str, Any] = {
        "layer_out_rel_err": json.dumps(errors),
        "layer_out_rel_err_mean": statistics.fmean(errors),
    }
    run = {"device": device, "batch_size": cfg["eval_batch_size"]}
    with fitted.attached(load_model(device)):
        approx = embed(texts.evaluation, fitted, lengths=cfg["length"], **run)
        if not bool(torch.isfinite(approx.embeddings).all()):
            return out | {"status": "nan", "reason": "variant model's embeddings contain NaN/Inf"}
        lengths = [cfg["length"]] * len(texts.evaluation)
        out.update(status="ok", **_fidelity(exact, approx, lengths, [cfg["length"]]))
        if exact_pairs is not None:
            out.update(_retrieval(fitted, texts.pairs, exact_pairs, **run))
    return out


def _fit(
    fitted: LayerwiseAttention, texts: TransferTexts, cfg: dict[str, Any], seed: int, device: str
) -> list[list[float]]:
    """Fit every layer's instance on the calibration texts; the loss curves, one per layer."""
    calibration = capture_layers(texts.calibration, cfg["length"], device)
    knobs = {k: cfg[k] for k in ("steps", "batch_size", "lr", "weight_decay", "ce_weight")}
    return [
        fit_layer(layer, data, seed=seed * 1000 + i, desc=f"{fitted.name} layer {i}", **knobs)
        for i, (layer, data) in enumerate(zip(fitted.layers, calibration))
    ]


def _curve(curves: list[list[float]], points: int = 50) -> list[float]:
    """The mean loss over layers at up to ``points`` evenly spaced steps (first and last in)."""
    mean = [statistics.fmean(step) for step in zip(*curves)]
    stride = max(1, -(-(len(mean) - 1) // (points - 1)))
    picked = list(range(0, len(mean), stride))
    if picked[-1] != len(mean) - 1:
        picked.append(len(mean) - 1)
    return [mean[i] for i in picked]


def _fit_path(out_dir: str | Path, row: dict[str, Any]) -> Path:
    knob = row.get("knob_value")
    return Path(out_dir) / f"transfer_{row['variant']}_{'default' if knob is None else knob}.pt"


def measure_transfer_point(
    point: Mapping[str, Any],
    factory: Callable[[int], AttentionVariant],
    out_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """One transfer point: the model with the variant before and after fitting, held out.

    Args:
        point: The resolved point; reads ``variant``, ``params``, ``device``, ``dtype``,
            ``seed``, optional ``exact``/``randomized``/``knob``/``knob_value`` and the
            ``transfer`` block (:data:`TRANSFER_DEFAULTS`).
        factory: ``factory(seed) -> AttentionVariant``, built for ``kv_len`` = the texts'
            length (``transfer.length``, by default the point's ``kv_len``) and ``head_dim``
            = 32.
        out_dir: The job's folder; with ``transfer.save`` the fit is saved there.

    Returns:
        Two ``fwd`` rows, ``stage`` = ``before`` and ``after`` (``trained`` False / True), each
        with the real-model columns (``embed_cosine``, ``embed_cosine_min``, ``hidden_rel_err``,
        the ``retrieval_*`` columns), ``layer_out_rel_err`` (JSON list, layers 0..5) and its
        mean ``layer_out_rel_err_mean``, ``texts`` (held-out passages), ``calibration_texts``,
        ``fit_params`` (number of fitted parameters, all layers); the ``after`` row also
        ``fit_time_s`` (capturing the calibration q, k, v and fitting every layer),
        ``fit_steps`` (per layer), ``fit_loss_first``/``fit_loss_final``
        (mean over layers), ``fit_loss_curve`` (JSON list, the mean over layers at up to 50
        steps) and ``fit_file`` (the saved fit's file name, or null). One row with status
        ``unsupported`` (no trainable parameters, or inputs the variant cannot run) or
        ``error``; this function does not raise for them.
    """
    device = str(point.get("device") or "cpu")
    seed = int(point.get("seed") or 0)
    row = _base_row(point, device, seed) | {"task": "transfer", "stage": None, "trained": None}
    try:
        cfg = transfer_config(point)
        variant = _build(factory, seed, cfg, device)
    except Exception as exc:  # noqa: BLE001 - a bad point is a row, the sweep goes on
        return [row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}]
    params = variant.config()
    length = cfg["length"]
    row.update(
        params=params,
        **describe(type(variant), params),
        batch=cfg["eval_batch_size"],
        q_len=length,
        kv_len=length,
        inputs_params={k: cfg[k] for k in ("length", "eval_texts", "calibration_every")},
    )
    if row["dtype"] != "float32":  # the weights are float32; other dtypes are not a measure here
        return [row | {"status": "unsupported", "reason": "transfer runs in float32 only"}]
    reasons = _unsupported_reasons(variant, [length], device)
    if reasons:
        return [row | {"status": "unsupported", "reason": "; ".join(reasons)}]
    try:
        materialize(variant, length, device)
        if not trainable_parameters(variant):
            reason = "not transferable: no trainable parameters"
            return [row | {"status": "unsupported", "reason": reason}]
        texts = transfer_texts(
            length,
            cfg["calibration_texts"],
            cfg["eval_texts"],
            cfg["retrieval_pairs"],
            seed=seed,
            every=cfg["calibration_every"],
        )
        # one instance per layer, each as the point builds it: "before" is the untrained model
        layers = [variant] + [_build(factory, seed, cfg, device) for _ in range(5)]
        for layer in layers[1:]:
            materialize(layer, length, device)
        fitted = LayerwiseAttention(layers)
        row.update(
            texts=len(texts.evaluation),
            calibration_texts=len(texts.calibration),
            fit_params=sum(p.numel() for p in trainable_parameters(fitted)),
        )
        before = row | {"stage": "before", "trained": False} | _measure(fitted, texts, cfg, device)
        started = time.perf_counter()
        curves = _fit(fitted, texts, cfg, seed, device)
        fit_time = time.perf_counter() - started
        fitted.trained = True
        after = row | {"stage": "after", "trained": True} | _measure(fitted, texts, cfg, device)
    except VariantUnsupported as exc:
        return [row | {"status": "unsupported", "reason": str(exc)}]
    except Exception as exc:  # noqa: BLE001 - any failure is a row with its reason
        return [row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}]
    after.update(
        fit_time_s=fit_time,
        fit_steps=cfg["steps"],
        fit_loss_first=statistics.fmean(c[0] for c in curves),
        fit_loss_final=statistics.fmean(c[-1] for c in curves),
        fit_loss_curve=json.dumps(_curve(curves)),
        fit_file=None,
    )
    if out_dir is not None and cfg["save"]:
        path = _fit_path(out_dir, after)
        meta = {"loss_curves": curves, "length": length, "seed": seed,
                "calibration_topics": texts.calibration_topics}  # fmt: skip
        save_fit(path, fitted, **meta)
        after["fit_file"] = path.name
    return [before, after]
