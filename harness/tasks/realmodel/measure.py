"""The realmodel task: any attention variant inside pretrained all-MiniLM-L6-v2.

One point runs the same real English texts (pydoc passages of several lengths, batched with
padding) through MiniLM with exact attention and with the point's variant in every layer, and
compares: sentence-embedding cosine, per-layer hidden-state error, the retrieval check and the
forward time, the exact and the variant model timed interleaved in one loop
(:func:`harness.minilm.embed.paired_timed_embed`). Whole-model rows carry the attention FLOPs
(``flops``) but no ``tflops``: attention FLOPs over the whole model's time is no rate of
anything.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch

from harness.measure.factory import Factory
from harness.minilm.embed import paired_timed_embed
from harness.minilm.layerwise import attached
from harness.minilm.point import (
    PointFailed,
    Row,
    check_runs,
    fidelity,
    measure_point,
    note,
    variant_columns,
)
from harness.minilm.retrieval import (
    NonFiniteEmbeddings,
    embed_pairs,
    exact_pair_embeddings,
    retrieval_columns,
    retrieval_pairs,
)
from harness.minilm.texts import pydoc_texts
from harness.tasks.realmodel.columns import timing_columns, work_columns
from harness.tasks.realmodel.config import RealmodelConfig
from harness.tasks.realmodel.fit_reuse import load_point_fit
from harness.tasks.realmodel.heatmap import variant_heatmap, write_heatmap
from variants.base import AttentionVariant

#: Texts per forward pass of the retrieval check.
RETRIEVAL_BATCH = 32


def realmodel_texts(
    lengths: list[int], texts_per_length: int, seed: int
) -> tuple[list[str], list[int]]:
    """The point's texts: ``texts_per_length`` pydoc passages truncated to each length.

    Interleaved by length (64, 128, ..., 64, 128, ...) so that every batch mixes lengths and
    padding is exercised. Returns ``(texts, lengths)``.
    """
    per_length = {n: pydoc_texts(texts_per_length, min_tokens=n, seed=seed) for n in lengths}
    texts, text_lengths = [], []
    for i in range(texts_per_length):
        for n in lengths:
            texts.append(per_length[n][i])
            text_lengths.append(n)
    return texts, text_lengths


def measure(point: Any, factory: Factory, out_dir: Path | None = None) -> list[Row]:
    """One realmodel point: MiniLM with exact attention and with the variant, same texts.

    Args:
        point: The :class:`harness.app.point.Point`; its ``task_cfg`` is a
            :class:`RealmodelConfig`.
        factory: ``factory(seed) -> AttentionVariant``, built for the point's ``kv_len`` (the
            longest length) and ``head_dim`` = 32.
        out_dir: The job's folder. When given and ``realmodel.heatmap`` is on, ``heatmap.json``
            is written there (:func:`harness.tasks.realmodel.heatmap.variant_heatmap`); a
            failure to draw it is a note on the row, never an error.

    Returns:
        One ``fwd`` row with the columns of ``harness.analysis.rows.COLUMNS`` (``exact``,
        ``randomized``, ``knob``, ``knob_value`` and ``params`` from the built variant;
        ``q_len`` is the longest text, ``batch`` the batch size, ``time_ms`` the variant
        model's forward time over all texts) plus ``embed_cosine`` (mean cosine of each text's
        embedding to the exact model's), ``embed_cosine_min``, ``embed_cosine_by_length`` (JSON
        ``{length: cosine}``), ``embed_cosine_unrelated`` (the exact model's cosine between
        different texts of one length: the reference), ``hidden_rel_err`` (JSON list, layers
        1..6), ``texts``, the timing of the exact model interleaved with the variant's
        (``exact_time_ms``, ``exact_time_iqr_ms``, ``time_ratio`` = median per-round
        variant/exact; ``repeats`` rounds), ``flops`` (attention only; no ``tflops``),
        ``exact_flops`` and ``work_exceeds_exact`` (with a note when true); ``params`` is read
        after the call (Longformer's ``resolved_backend``). With ``realmodel.retrieval_pairs``
        > 0 also the retrieval check's columns
        (:func:`harness.minilm.retrieval.retrieval_columns`). With ``realmodel.fit_path`` the
        saved transfer fit's instances, one per layer, are measured instead of the untrained
        variant (:mod:`harness.tasks.realmodel.fit_reuse`): ``trained`` True, ``fit_file`` the
        path, ``params`` the fit's, no heatmap. Failures are rows with status unsupported, nan
        or error and the reason (a missing or mismatched fit names ``realmodel.fit_path``;
        NaN/Inf retrieval embeddings name the model and the texts' lengths).
    """

    def build() -> AttentionVariant:
        return factory(point.seed).to(point.device).eval()

    return measure_point(point, build, partial(_measure, point, point.task_cfg, out_dir))


def _heatmap(row: Row, variant: AttentionVariant, cfg: RealmodelConfig, out_dir: Path) -> None:
    """Write the job's heatmap.json; a failure is a note on the row."""
    try:
        where = (cfg.heatmap_sentence, cfg.heatmap_layer, cfg.heatmap_head)
        write_heatmap(out_dir, variant_heatmap(type(variant), *where))
    except Exception as exc:  # noqa: BLE001 - the measurement still stands
        note(row, f"heatmap failed: {type(exc).__name__}: {exc}")


def _retrieval(row: Row, variant: AttentionVariant, cfg: RealmodelConfig, point: Any) -> None:
    """The retrieval check's columns on ``cfg.retrieval_pairs`` pairs chosen by the seed.

    NaN/Inf embeddings make the row ``nan`` (:class:`PointFailed`, the reason naming the model
    and the texts' lengths); any other failure is a note on the row (the embedding measures
    still stand).
    """
    try:
        pairs = retrieval_pairs(cfg.retrieval_pairs, point.seed)
        exact = exact_pair_embeddings(pairs, point.device, RETRIEVAL_BATCH)
        with attached(variant, point.device):
            emb = embed_pairs(pairs, variant, point.device, RETRIEVAL_BATCH)
        row.update(retrieval_columns(emb, exact))
    except NonFiniteEmbeddings as exc:
        raise PointFailed(f"retrieval check: {exc}", "nan") from exc
    except Exception as exc:  # noqa: BLE001 - the embedding figures still stand
        note(row, f"retrieval check failed: {type(exc).__name__}: {exc}")


def _measure(
    point: Any, cfg: RealmodelConfig, out_dir: Path | None, row: Row, variant: AttentionVariant
) -> list[Row]:
    if cfg.fit_path:  # the saved fit's instances, one per layer, replace the variant
        try:
            variant = load_point_fit(cfg.fit_path, variant, point.device)
        except ValueError as exc:
            raise PointFailed(str(exc)) from exc
        row.update(variant_columns(variant), trained=True, fit_file=cfg.fit_path)
    longest = max(cfg.lengths)
    row.update(
        batch=cfg.batch_size,
        q_len=longest,
        kv_len=longest,
        inputs_params={"lengths": list(cfg.lengths), "texts_per_length": cfg.texts_per_length},
    )
    if out_dir is not None and cfg.heatmap and not cfg.fit_path:  # heatmaps are untrained
        _heatmap(row, variant, cfg, out_dir)
    check_runs(point, variant, cfg.lengths)
    texts, lengths = realmodel_texts(cfg.lengths, cfg.texts_per_length, point.seed)
    row.update(texts=len(texts))
    run = {"batch_size": cfg.batch_size, "device": point.device, "repeats": cfg.repeats}
    with attached(variant, point.device):
        exact, approx, exact_time, timing = paired_timed_embed(
            texts, variant, lengths=lengths, **run
        )
    # after the call: what ran (Longformer's resolved_backend) and the work it did
    row["params"] = variant.config()
    row.update(timing_columns(exact_time, timing), **work_columns(variant, lengths))
    if row["work_exceeds_exact"]:
        note(
            row,
            f"work_exceeds_exact: the variant's attention FLOPs {row['flops']:.3g} are "
            f"{row['flops'] / row['exact_flops']:.2f}x exact attention's at these lengths",
        )
    if not bool(torch.isfinite(approx.embeddings).all()):
        return [row | {"status": "nan", "reason": "variant model's embeddings contain NaN/Inf"}]
    row.update(status="ok", **fidelity(exact, approx, lengths, cfg.lengths))
    if cfg.retrieval_pairs:
        _retrieval(row, variant, cfg, point)
    return [row]
