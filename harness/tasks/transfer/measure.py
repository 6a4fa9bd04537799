"""The transfer task: fit a learnable variant to MiniLM's softmax attention, measure it held out.

One point takes a variant with ``torch.nn.Parameter``s (Linformer with ``init=learned``,
Performer with a learnable projection, Hedgehog, any plugin), builds one instance per MiniLM
layer, and measures the model with them twice on held-out text
(:mod:`harness.tasks.transfer.evaluate`): untrained (``stage`` = ``before``; the instance a
realmodel point would drop in) and after fitting each instance to its layer on calibration text
(``stage`` = ``after``; :mod:`harness.tasks.transfer.fit`). The model itself is frozen
throughout. Calibration and held-out texts come from disjoint pydoc topics
(:mod:`harness.tasks.transfer.texts`), every text cut to exactly the point's ``kv_len`` tokens
(no padding: Linformer's ``k x kv_len`` projections are built for that length).
"""

from __future__ import annotations

import json
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

from harness.measure.factory import Factory
from harness.minilm.layerwise import LayerwiseAttention, save_fit
from harness.minilm.limits import MAX_TOKENS, NUM_LAYERS
from harness.minilm.point import PointFailed, Row, check_runs, measure_point
from harness.tasks.transfer.config import TransferConfig
from harness.tasks.transfer.evaluate import held_out
from harness.tasks.transfer.fit import (
    capture_layers,
    fit_layer,
    fit_objective,
    materialize,
    trainable_parameters,
)
from harness.tasks.transfer.texts import TransferTexts, transfer_texts
from variants.base import AttentionVariant, check_int

#: The fields of :class:`TransferConfig` that :func:`fit_layer` takes.
FIT_SETTINGS = ("steps", "batch_size", "lr", "weight_decay", "loss")


def _build(factory: Factory, point: Any) -> AttentionVariant:
    """The point's variant with ``transfer.learnable``'s settings for its name applied."""
    variant = factory(point.seed)
    extra = point.task_cfg.learnable.get(variant.name)
    if extra:  # rebuilt from its own constructor parameters, plus the learnable settings
        variant = type(variant)(**(variant.config() | dict(extra)))
    return variant.to(point.device).eval()


def _fit(
    fitted: LayerwiseAttention, texts: TransferTexts, cfg: TransferConfig, point: Any
) -> list[list[float]]:
    """Fit every layer's instance on the calibration texts; the loss curves, one per layer."""
    calibration = capture_layers(texts.calibration, point.kv_len, point.device)
    knobs = {k: getattr(cfg, k) for k in FIT_SETTINGS}
    return [
        fit_layer(
            layer, data, seed=point.seed * 1000 + i, desc=f"{fitted.name} layer {i}", **knobs
        )
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


def _fit_path(out_dir: str | Path, row: Row) -> Path:
    knob = row.get("knob_value")
    return Path(out_dir) / f"transfer_{row['variant']}_{'default' if knob is None else knob}.pt"


def measure(point: Any, factory: Factory, out_dir: Path | None = None) -> list[Row]:
    """One transfer point: the model with the variant before and after fitting, held out.

    Args:
        point: The :class:`harness.app.point.Point`; its ``task_cfg`` is a
            :class:`TransferConfig` and its ``kv_len`` the texts' length (2..512).
        factory: ``factory(seed) -> AttentionVariant``, built for the point's ``kv_len`` and
            ``head_dim`` = 32.
        out_dir: The job's folder; with ``transfer.save`` the fit is saved there as
            ``transfer_<variant>_<knob value>.pt`` (:func:`harness.minilm.layerwise.save_fit`).

    Returns:
        Two ``fwd`` rows, ``stage`` = ``before`` and ``after`` (``trained`` False / True), each
        with the real-model columns (``embed_cosine``, ``embed_cosine_min``,
        ``embed_cosine_unrelated``: the exact model's cosine between different held-out
        passages, ``hidden_rel_err``, the ``retrieval_*`` columns), ``layer_out_rel_err``
        (JSON list, layers 0..5) and its mean ``layer_out_rel_err_mean``, ``texts`` (held-out
        passages), ``calibration_texts``, ``fit_params`` (number of fitted parameters, all
        layers); the ``after`` row also ``fit_time_s`` (capturing the calibration q, k, v and
        fitting every layer), ``fit_steps`` (per layer), ``fit_loss`` (``attention`` or
        ``output``: the loss that was minimised,
        :func:`harness.tasks.transfer.fit.fit_objective`), ``fit_loss_first``/
        ``fit_loss_final`` (mean over layers), ``fit_loss_curve`` (JSON list, the mean over
        layers at up to 50 steps) and ``fit_file`` (the saved fit's file name, or null). One
        row with status ``unsupported`` (no trainable parameters, or inputs the variant cannot
        run) or ``error`` otherwise.
    """
    return measure_point(
        point, partial(_build, factory, point), partial(_measure, point, factory, out_dir)
    )


def _measure(
    point: Any, factory: Factory, out_dir: Path | None, row: Row, variant: AttentionVariant
) -> list[Row]:
    cfg: TransferConfig = point.task_cfg
    kv_len, device = point.kv_len, point.device
    row.update(
        stage=None,
        trained=None,
        batch=cfg.eval_batch_size,
        q_len=kv_len,
        kv_len=kv_len,
        inputs_params={"eval_texts": cfg.eval_texts, "calibration_every": cfg.calibration_every},
    )
    check_int(None, "kv_len", kv_len, 2, MAX_TOKENS, error=PointFailed)  # the model's positions
    check_runs(point, variant, [kv_len])
    materialize(variant, kv_len, device)
    if not trainable_parameters(variant):
        raise PointFailed("not transferable: no trainable parameters", "unsupported")
    texts = transfer_texts(kv_len, cfg.calibration_texts, cfg.eval_texts, cfg.retrieval_pairs,
                           seed=point.seed, every=cfg.calibration_every)  # fmt: skip
    # one instance per layer, each as the point builds it: "before" is the untrained model
    layers = [variant] + [_build(factory, point) for _ in range(NUM_LAYERS - 1)]
    for layer in layers[1:]:
        materialize(layer, kv_len, device)
    fitted = LayerwiseAttention(layers)
    row.update(
        texts=len(texts.evaluation),
        calibration_texts=len(texts.calibration),
        fit_params=sum(p.numel() for p in trainable_parameters(fitted)),
    )
    evaluate = partial(held_out, texts=texts, kv_len=kv_len, batch_size=cfg.eval_batch_size,
                       device=device)  # fmt: skip
    before = row | {"stage": "before", "trained": False} | evaluate(fitted)
    started = time.perf_counter()
    curves = _fit(fitted, texts, cfg, point)
    fit_time = time.perf_counter() - started
    fitted.trained = True
    after = row | {"stage": "after", "trained": True} | evaluate(fitted)
    after.update(
        fit_time_s=fit_time,
        fit_steps=cfg.steps,
        fit_loss=fit_objective(variant, cfg.loss),
        fit_loss_first=statistics.fmean(c[0] for c in curves),
        fit_loss_final=statistics.fmean(c[-1] for c in curves),
        fit_loss_curve=json.dumps(_curve(curves)),
        fit_file=None,
    )
    if out_dir is not None and cfg.save:
        path = _fit_path(out_dir, after)
        meta = {"loss_curves": curves, "kv_len": kv_len, "seed": point.seed,
                "calibration_topics": texts.calibration_topics}  # fmt: skip
        save_fit(path, fitted, **meta)
        after["fit_file"] = path.name
    return [before, after]
