"""Real-model fidelity: any attention variant inside pretrained all-MiniLM-L6-v2.

One point of the ``realmodel`` task runs the same real English texts (pydoc passages of several
lengths, batched with padding) through MiniLM with exact attention and with the point's variant
in every layer (:mod:`harness.realmodel.adapter`), and compares: sentence-embedding cosine,
per-layer hidden-state error, the retrieval check (:mod:`harness.realmodel.retrieval`: top-1
with its 95% interval and the paired comparison with exact attention) and the forward time.
The exact and the variant model are timed interleaved in one loop
(:func:`harness.realmodel.embed.paired_timed_embed`), so each row's ``exact_time_ms`` was
measured beside its ``time_ms``. Whole-model rows carry the attention FLOPs (``flops``) but no
``tflops``: attention FLOPs over the whole model's time is no rate of anything. With
``realmodel.heatmap`` on, it also writes the job's ``heatmap.json``
(:mod:`harness.realmodel.heatmap`) beside its rows.

Public: :data:`REALMODEL_DEFAULTS`, :func:`measure_realmodel_point`.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from harness.measure.env import environment
from harness.measure.factory import describe
from harness.realmodel.adapter import VariantUnsupported
from harness.realmodel.embed import MIN_PAIRED_REPEATS, Embeddings, paired_timed_embed
from harness.realmodel.fit_reuse import FIELD as FIT_FIELD
from harness.realmodel.fit_reuse import attached, load_point_fit
from harness.realmodel.heatmap import HEATMAP_SENTENCE, variant_heatmap, write_heatmap
from harness.realmodel.model import HEAD_DIM, MAX_TOKENS, NUM_HEADS, NUM_LAYERS
from harness.realmodel.retrieval import MIN_PAIRS, retrieval_check
from harness.realmodel.texts import realmodel_texts
from variants.base import AttentionVariant, check_int, exact_attention_flops

#: Defaults of the ``realmodel:`` config block (conf/experiment/realmodel.yaml documents them).
REALMODEL_DEFAULTS: dict[str, Any] = {
    "lengths": [64, 128, 256, 512],  # token lengths of the texts ([CLS] and [SEP] included)
    "texts_per_length": 4,  # distinct pydoc passages per length
    "batch_size": 4,  # texts per forward pass (mixed lengths, right-padded)
    "repeats": MIN_PAIRED_REPEATS,  # timed (exact, variant) rounds after one warm-up round
    "retrieval_pairs": MIN_PAIRS,  # pydoc pairs of the retrieval check (>= 200); 0 turns it off
    "heatmap": True,  # write heatmap.json (exact and the variant's matrix) beside the rows
    "heatmap_sentence": HEATMAP_SENTENCE,  # the heatmap's text
    "heatmap_layer": 0,  # MiniLM layer of the heatmap, 0..5
    "heatmap_head": 0,  # MiniLM head of the heatmap, 0..11
    "fit_path": None,  # a saved transfer fit to measure instead of the untrained variant
}


def realmodel_config(point: Mapping[str, Any]) -> dict[str, Any]:
    """The point's ``realmodel`` block over :data:`REALMODEL_DEFAULTS`, checked.

    Raises:
        ValueError: An unknown key or a value out of range (the message names it).
    """
    cfg = dict(REALMODEL_DEFAULTS)
    cfg.update({k: v for k, v in (point.get("realmodel") or {}).items() if v is not None})
    unknown = sorted(set(cfg) - set(REALMODEL_DEFAULTS))
    if unknown:
        raise ValueError(
            f"realmodel: unknown key(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(REALMODEL_DEFAULTS)}"
        )
    lengths = cfg["lengths"]
    lengths = [int(n) for n in ([lengths] if isinstance(lengths, int) else lengths)]
    if not lengths or any(not 2 <= n <= MAX_TOKENS for n in lengths):
        raise ValueError(f"realmodel: lengths={lengths} must be in [2, {MAX_TOKENS}]")
    cfg["lengths"] = sorted(set(lengths))
    for field in ("texts_per_length", "batch_size"):
        check_int("realmodel", field, cfg[field], low=1, error=ValueError)
    check_int("realmodel", "repeats", cfg["repeats"], low=MIN_PAIRED_REPEATS, error=ValueError)
    check_int("realmodel", "retrieval_pairs", cfg["retrieval_pairs"], low=0, error=ValueError)
    if 0 < cfg["retrieval_pairs"] < MIN_PAIRS:
        # fewer pairs cannot separate variants: at 32, three discordant queries are p = 0.25
        raise ValueError(
            f"realmodel: retrieval_pairs={cfg['retrieval_pairs']} must be 0 (off) or >= "
            f"{MIN_PAIRS}"
        )
    check_int("realmodel", "heatmap_layer", cfg["heatmap_layer"], 0, NUM_LAYERS - 1, ValueError)
    check_int("realmodel", "heatmap_head", cfg["heatmap_head"], 0, NUM_HEADS - 1, ValueError)
    if not isinstance(cfg["heatmap"], bool):
        raise ValueError(f"realmodel: heatmap={cfg['heatmap']!r} must be true or false")
    if not isinstance(cfg["heatmap_sentence"], str) or not cfg["heatmap_sentence"].strip():
        raise ValueError("realmodel: heatmap_sentence must be a non-empty text")
    if cfg["fit_path"] is not None and not (isinstance(cfg["fit_path"], str) and cfg["fit_path"]):
        raise ValueError(f"{FIT_FIELD}={cfg['fit_path']!r} must be a file path or null")
    return cfg


def _note(row: dict[str, Any], text: str) -> None:
    row["notes"] = f"{row['notes']}; {text}" if row.get("notes") else text


def _unsupported_reasons(variant: AttentionVariant, lengths: list[int], device: str) -> list[str]:
    """The variant's own reasons against the texts' shapes (one probe per length)."""
    reasons: list[str] = []
    for n in lengths:
        probe = torch.zeros(1, NUM_HEADS, n, HEAD_DIM, device=device)  # (1, H, N, D)
        found = variant.not_supported_reasons(probe, probe, probe, False)
        reasons += [r for r in found if r not in reasons]
    return reasons


def _hidden_rel_err(exact: Embeddings, approx: Embeddings) -> list[float]:
    """Relative Frobenius error of each transformer layer's output over all real tokens."""
    errs = []
    for layer in range(1, len(exact.hidden_states)):
        ref = torch.cat(exact.hidden_states[layer]).double()
        got = torch.cat(approx.hidden_states[layer]).double()
        errs.append(float((got - ref).norm() / ref.norm()))
    return errs


def _fidelity(
    exact: Embeddings, approx: Embeddings, lengths: list[int], cfg_lengths: list[int]
) -> dict[str, Any]:
    """Embedding cosine (mean, worst, per length) and per-layer hidden-state error."""
    cosines = (exact.embeddings.double() * approx.embeddings.double()).sum(-1)  # (n_texts,)
    by_length = {
        str(n): float(cosines[[i for i, m in enumerate(lengths) if m == n]].mean())
        for n in cfg_lengths
    }
    return {
        "embed_cosine": float(cosines.mean()),
        "embed_cosine_min": float(cosines.min()),
        # JSON text, as in results.csv: only params and inputs_params are read back as mappings
        "embed_cosine_by_length": json.dumps(by_length),
        "hidden_rel_err": json.dumps(_hidden_rel_err(exact, approx)),
    }


def _retrieval_columns(
    variant: AttentionVariant, label: str, n_pairs: int, device: str, seed: int
) -> dict[str, Any]:
    """The retrieval check's columns for one variant (:func:`retrieval_check`).

    ``retrieval_top1`` with its 95% Wilson interval (``_lo``, ``_hi``), the same for exact
    attention, and the paired comparison on the same queries: ``retrieval_better`` (the variant
    right, exact wrong), ``retrieval_worse`` (the opposite) and ``retrieval_mcnemar_p``.
    """
    found = retrieval_check({label: variant}, n_pairs, device, seed=seed)
    exact_r, approx_r = found.iloc[0], found.iloc[1]
    out: dict[str, Any] = {
        "retrieval_pairs": n_pairs,
        "retrieval_exact_top1": float(exact_r["top1"]),
        "retrieval_exact_top1_lo": float(exact_r["top1_lo"]),
        "retrieval_exact_top1_hi": float(exact_r["top1_hi"]),
    }
    if approx_r["status"] != "ok":  # e.g. too short for Linformer's projections
        raise RuntimeError(approx_r["reason"])
    for column in ("top1", "top1_lo", "top1_hi", "mean_rank", "agree_top1", "mcnemar_p"):
        out[f"retrieval_{column}"] = float(approx_r[column])
    for column in ("better", "worse"):
        out[f"retrieval_{column}"] = int(approx_r[column])
    return out


def _flops(variant: AttentionVariant | None, lengths: list[int]) -> int | None:
    """Attention FLOPs of one pass over the texts (every layer, each text at its length), or
    None if not declared; ``None`` for the variant is exact softmax attention."""
    try:
        return sum(
            NUM_LAYERS
            * (
                exact_attention_flops(1, NUM_HEADS, n, n, HEAD_DIM)
                if variant is None
                else variant.flops(1, NUM_HEADS, n, n, HEAD_DIM, False)
            )
            for n in lengths
        )
    except NotImplementedError:
        return None


def _work_columns(variant: AttentionVariant, lengths: list[int]) -> dict[str, Any]:
    """``flops`` and ``work_exceeds_exact``: does the approximation do at least exact's work?

    Counted after the call, so the backend that ran decides (Longformer's ``auto``). Exact
    variants get ``None``: the flag is about approximations that save nothing (Nystrom with
    landmarks >= half the tokens costs more than the exact attention it approximates).
    """
    flops, exact_flops = _flops(variant, lengths), _flops(None, lengths)
    exceeds = None if flops is None or variant.exact else flops >= exact_flops
    return {"flops": flops, "exact_flops": exact_flops, "work_exceeds_exact": exceeds}


def _timing_columns(exact_time: dict[str, Any], timing: dict[str, Any]) -> dict[str, Any]:
    """The variant's time, exact attention's time from the same loop, and their paired ratio."""
    ratios = [t / e for t, e in zip(timing["times_ms"], exact_time["times_ms"])]
    return {
        "time_ms": timing["time_ms"],
        "time_iqr_ms": timing["time_iqr_ms"],
        "repeats": timing["repeats"],
        "exact_time_ms": exact_time["time_ms"],
        "exact_time_iqr_ms": exact_time["time_iqr_ms"],
        # median of each round's variant/exact: the slowdown with the machine's drift paired out
        "time_ratio": statistics.median(ratios),
    }


def _base_row(point: Mapping[str, Any], device: str, seed: int) -> dict[str, Any]:
    """The row's identity columns before anything runs (the point's own description; the
    built variant's replaces it once there is one)."""
    row: dict[str, Any] = {
        "task": "realmodel",
        "variant": point.get("variant"),
        "params": dict(point.get("params") or {}),
        "exact": point.get("exact"),
        "randomized": point.get("randomized"),
        "knob": point.get("knob"),
        "knob_value": point.get("knob_value"),
        "device": device,
        "dtype": str(point.get("dtype") or "float32").replace("torch.", ""),
        "heads": NUM_HEADS,
        "head_dim": HEAD_DIM,
        "causal": False,
        "inputs": "pydoc",
        "seed": seed,
        "pass": "fwd",
        "status": None,
        "reason": None,
    }
    return row | environment(device)


def measure_realmodel_point(
    point: Mapping[str, Any],
    factory: Callable[[int], AttentionVariant],
    out_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """One real-model point: MiniLM with exact attention and with the variant, same texts.

    Args:
        point: The resolved point; reads ``variant``, ``params``, ``device``, ``dtype``,
            ``seed``, optional ``exact``/``randomized``/``knob``/``knob_value`` and the
            ``realmodel`` block (:data:`REALMODEL_DEFAULTS`).
        factory: ``factory(seed) -> AttentionVariant``; build it for ``kv_len`` = the longest
            length and ``head_dim`` = 32.
        out_dir: The job's folder (where its rows.jsonl goes). When given and
            ``realmodel.heatmap`` is on, ``heatmap.json`` is written there
            (:func:`harness.realmodel.heatmap.variant_heatmap`); a failure to draw it is a
            note on the row, never an error.

    Returns:
        One ``fwd`` row with the columns of ``harness.analysis.rows.COLUMNS`` (``exact``,
        ``randomized``, ``knob``, ``knob_value`` and ``params`` from the built variant;
        ``q_len`` is the longest text, ``batch`` the batch size, ``time_ms`` the variant
        model's forward time over all texts) plus ``task`` = "realmodel", ``embed_cosine``
        (mean cosine of each text's embedding to the exact model's), ``embed_cosine_min``,
        ``embed_cosine_by_length`` (JSON ``{length: cosine}``), ``hidden_rel_err`` (JSON list,
        layers 1..6), ``texts``, the timing of the exact model interleaved with the variant's
        (``exact_time_ms``, ``exact_time_iqr_ms``, ``time_ratio`` = median per-round
        variant/exact; ``repeats`` rounds), ``flops`` (attention only; no ``tflops``),
        ``exact_flops`` and ``work_exceeds_exact`` (with a note when true); ``params`` is read
        after the call (Longformer's ``resolved_backend``). With ``realmodel.retrieval_pairs``
        > 0 also the retrieval check: ``retrieval_exact_top1`` (with ``_lo``/``_hi``),
        ``retrieval_top1``, ``retrieval_top1_lo``, ``retrieval_top1_hi`` (95% Wilson),
        ``retrieval_better``, ``retrieval_worse``, ``retrieval_mcnemar_p``,
        ``retrieval_mean_rank``, ``retrieval_agree_top1``. With ``realmodel.fit_path`` the
        saved transfer fit's instances, one per layer, are measured instead of the untrained
        variant (:mod:`harness.realmodel.fit_reuse`): ``trained`` True, ``fit_file`` the path,
        ``params`` the fit's, no heatmap. Failures are rows with status unsupported, nan or
        error and the reason (a missing or mismatched fit names ``realmodel.fit_path``); this
        function does not raise for them.
    """
    device = str(point.get("device") or "cpu")
    seed = int(point.get("seed") or 0)
    row = _base_row(point, device, seed)
    try:
        variant = factory(seed).to(device).eval()
    except Exception as exc:  # noqa: BLE001 - a bad variant is a row, the sweep goes on
        return [row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}]
    params = variant.config()
    row.update(params=params, **describe(type(variant), params))
    try:
        cfg = realmodel_config(point)
        if cfg["fit_path"]:  # the saved fit's instances, one per layer, replace the variant
            variant = load_point_fit(cfg["fit_path"], variant, device)
            params = variant.config()
            row.update(params=params, **describe(type(variant.layers[0]), params))
            row.update(trained=True, fit_file=cfg["fit_path"])
    except ValueError as exc:
        return [row | {"status": "error", "reason": str(exc)}]
    longest = max(cfg["lengths"])
    row.update(
        batch=cfg["batch_size"],
        q_len=longest,
        kv_len=longest,
        inputs_params={k: cfg[k] for k in ("lengths", "texts_per_length")},
    )
    if out_dir is not None and cfg["heatmap"] and not cfg["fit_path"]:  # heatmaps are untrained
        try:
            where = (cfg["heatmap_sentence"], cfg["heatmap_layer"], cfg["heatmap_head"])
            write_heatmap(out_dir, variant_heatmap(type(variant), *where))
        except Exception as exc:  # noqa: BLE001 - the measurement below still stands
            _note(row, f"heatmap failed: {type(exc).__name__}: {exc}")
    if row["dtype"] != "float32":  # the weights are float32; other dtypes are not a measure here
        return [row | {"status": "unsupported", "reason": "realmodel runs in float32 only"}]
    # Refuse by the variant's own reasons before loading anything.
    reasons = _unsupported_reasons(variant, cfg["lengths"], device)
    if reasons:
        return [row | {"status": "unsupported", "reason": "; ".join(reasons)}]
    run = {"batch_size": cfg["batch_size"], "device": device, "repeats": cfg["repeats"]}
    try:
        texts, lengths = realmodel_texts(cfg["lengths"], cfg["texts_per_length"], seed)
        row.update(texts=len(texts))
        with attached(variant, device):
            exact, approx, exact_time, timing = paired_timed_embed(
                texts, variant, lengths=lengths, **run
            )
    except VariantUnsupported as exc:
        return [row | {"status": "unsupported", "reason": str(exc)}]
    except Exception as exc:  # noqa: BLE001 - any failure is a row with its reason
        return [row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}]
    # after the call: what ran (Longformer's resolved_backend) and the work it did
    row["params"] = variant.config()
    row.update(_timing_columns(exact_time, timing), **_work_columns(variant, lengths))
    if row["work_exceeds_exact"]:
        _note(
            row,
            f"work_exceeds_exact: the variant's attention FLOPs {row['flops']:.3g} are "
            f"{row['flops'] / row['exact_flops']:.2f}x exact attention's at these lengths",
        )
    if not bool(torch.isfinite(approx.embeddings).all()):
        return [row | {"status": "nan", "reason": "variant model's embeddings contain NaN/Inf"}]
    row.update(status="ok", **_fidelity(exact, approx, lengths, cfg["lengths"]))
    if cfg["retrieval_pairs"]:
        try:
            n_pairs = cfg["retrieval_pairs"]
            with attached(variant, device):
                row.update(_retrieval_columns(variant, row["variant"], n_pairs, device, seed))
        except Exception as exc:  # noqa: BLE001 - the embedding figures above still stand
            _note(row, f"retrieval check failed: {type(exc).__name__}: {exc}")
    return [row]
