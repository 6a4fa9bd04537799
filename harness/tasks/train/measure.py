"""The train task's measurement: a tiny transformer with the point's variant, trained on one task.

The model's width is the point's ``heads * head_dim`` and its length the point's ``q_len``
(= ``kv_len``); MQAR's form follows ``causal``. docs/training.md describes the experiment.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from harness.measure.factory import Factory
from harness.tasks.train.config import TrainConfig
from harness.tasks.train.data import make_task
from harness.tasks.train.loop import (
    LoopConfig,
    TrainResult,
    step_peak_memory,
    train,
)
from harness.tasks.train.model import ModelConfig, TinyTransformer, parameter_counts
from harness.tasks.train.state import state_bytes
from variants.base import AttentionVariant

#: MQAR accuracies whose first crossing is recorded as steps_to_<percent>.
THRESHOLDS = (0.5, 0.9, 0.99)


def _base_row(point: Any, cfg: TrainConfig) -> dict[str, Any]:
    """The row's identifying columns, from the point alone (before anything is built)."""
    return {
        "task": "train",
        "train_task": cfg.task,
        "variant": point.variant,
        "params": dict(point.params),
        **point.facts(),
        "device": point.device,
        "dtype": point.dtype,
        "heads": point.heads,
        "head_dim": point.head_dim,
        "q_len": point.q_len,
        "kv_len": point.kv_len,
        "causal": bool(point.causal),
        "seed": point.seed,
        "pass": "train",
        "batch": cfg.batch,
        "lr": cfg.lr,
        "steps": cfg.steps,
        "min_steps": cfg.min_steps,
        "plateau_window": cfg.plateau_window,
        "plateau_delta": cfg.plateau_delta,
        "status": None,
        "reason": None,
    }


def _summary(result: TrainResult, metric: str) -> dict[str, Any]:
    """Final and best evaluation, steps to the MQAR thresholds, the curve."""
    values = [value for _, value in result.curve if math.isfinite(value)]
    accuracy = metric == "accuracy"
    final = values[-1] if values else None
    best = (max(values) if accuracy else min(values)) if values else None
    suffix = "accuracy" if accuracy else "bpc"
    out = {"metric": metric, "curve": result.curve, "final_eval": final, "best_eval": best}
    out |= {f"final_{suffix}": final, f"best_{suffix}": best}
    for threshold in THRESHOLDS:
        hits = [step for step, value in result.curve if accuracy and value >= threshold]
        out[f"steps_to_{round(threshold * 100)}"] = hits[0] if hits else None
    return out


def _loop_config(cfg: TrainConfig, metric: str, trivial: float | None = None) -> LoopConfig:
    accuracy = metric == "accuracy"
    return LoopConfig(
        steps=cfg.steps,
        lr=float(cfg.lr),
        warmup=cfg.warmup,
        min_lr_ratio=float(cfg.min_lr_ratio),
        weight_decay=float(cfg.weight_decay),
        grad_clip=float(cfg.grad_clip),
        eval_every=cfg.eval_every,
        target=cfg.target if accuracy else None,
        higher_is_better=accuracy,
        plateau_delta=None if cfg.plateau_delta is None else float(cfg.plateau_delta),
        plateau_window=float(cfg.plateau_window),
        min_steps=cfg.min_steps,
        trivial=trivial,
    )


def measure(point: Any, factory: Factory, out_dir: Path | None = None) -> list[dict[str, Any]]:
    """Train one model with the point's variant and return its row.

    Args:
        point: The point (:class:`harness.app.point.Point`); ``point.task_cfg`` is its
            :class:`~harness.tasks.train.config.TrainConfig`.
        factory: ``factory(seed) -> AttentionVariant`` built for ``kv_len`` and ``head_dim``;
            called once per block with seed ``100 * seed + block``.
        out_dir: The job's folder (unused: the row holds everything, the curve included).

    Returns:
        One row: the row contract's columns (``exact``, ``randomized``, ``knob``,
        ``knob_value``, ``params``) plus ``task`` = "train", ``train_task``, ``task_params``,
        ``model``, ``lr``, ``steps``, ``steps_run``, ``nan_step``, ``metric``, ``final_eval``,
        ``best_eval``, ``final_accuracy`` / ``best_accuracy`` (MQAR) or ``final_bpc`` /
        ``best_bpc`` (chars), ``steps_to_50`` / ``steps_to_90`` / ``steps_to_99`` (MQAR: the
        first evaluation at or above that accuracy), ``chance``, ``curve`` (``[[step, value],
        ...]`` from step 0), ``time_ms`` (median time of one training step: forward, backward,
        clipping and the AdamW update), ``time_iqr_ms``, ``repeats`` (steps timed),
        ``peak_mem_bytes`` (one training step), ``mem_method``, ``train_loss``,
        ``train_time_s`` and the parameter counts ``n_params``, ``n_attention_params``,
        ``n_variant_params``. A variant that cannot run the task is an ``unsupported`` row with
        the reasons, a diverged run a ``nan`` row with the step, any other failure an ``error``
        row.
    """
    from harness.measure.env import environment, set_threads

    cfg: TrainConfig = point.task_cfg
    row = _base_row(point, cfg)
    set_threads(point.measure.threads)
    row.update(environment(row["device"]))
    heads, head_dim, n = row["heads"], row["head_dim"], row["q_len"]
    if row["dtype"] != "float32":
        return [row | {"status": "unsupported", "reason": "training runs in float32 only"}]
    if row["kv_len"] != n:
        reason = f"train: kv_len={row['kv_len']} must equal seq_len={n} (self-attention)"
        return [row | {"status": "error", "reason": reason}]
    try:
        torch.manual_seed(row["seed"])
        task = make_task(cfg, n, row["causal"], row["seed"], row["device"])
        row.update(inputs=task.name, task_params=task.params, chance=task.chance)
        row.update(plateau=task.plateau)
        shape = ModelConfig(
            task.vocab, n, heads * head_dim, heads, cfg.layers, cfg.mlp_ratio, cfg.short_conv
        )
        model = TinyTransformer(shape, lambda block: factory(100 * row["seed"] + block))
    except Exception as exc:  # noqa: BLE001 - a bad task or variant is a row, the sweep goes on
        return [row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}]
    first = model.variants()[0]
    row.update(params=first.config(), exact=first.exact, randomized=first.randomized)
    row.update(approximates_softmax=first.approximates_softmax)
    if first.knob is not None:
        row.update(knob=first.knob, knob_value=first.config().get(first.knob))
    row["model"] = {k: getattr(shape, k) for k in ("vocab", "width", "heads", "layers")}
    row["model"]["mlp_ratio"] = shape.mlp_ratio
    if shape.short_conv:  # only where used: rows without it are the same model as before
        row["model"]["short_conv"] = shape.short_conv
    row.update(parameter_counts(model))
    row["state_bytes"] = state_bytes(
        row["variant"], row["params"], n, head_dim, heads, cfg.layers, row["causal"],
        bool(row["exact"]), row["dtype"],
    )  # fmt: skip
    reasons = task.unsupported_reasons(first, heads, head_dim)
    if reasons:
        return [row | {"status": "unsupported", "reason": "; ".join(reasons)}]
    loop = _loop_config(cfg, task.metric, task.plateau)
    if loop.trivial_margin is not None:
        row["trivial_margin"] = loop.trivial_margin
    model.to(row["device"])
    started = time.perf_counter()
    try:
        label = f"{row['variant']} {task.name} n={n} lr={cfg.lr:g}"
        result = train(
            model, task.next_batch, task.loss_of, task.evaluate, loop, task.device, label
        )
    except Exception as exc:  # noqa: BLE001 - e.g. a variant failing in backward
        return [row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}]
    time_ms, iqr_ms = result.time_per_step_ms()
    row.update(_summary(result, task.metric), train_time_s=time.perf_counter() - started)
    row.update(steps_run=result.steps_run, nan_step=result.nan_step, train_loss=result.last_loss)
    row.update(converged=result.converged, stop_reason=result.stop_reason)
    row.update(time_ms=time_ms, time_iqr_ms=iqr_ms, repeats=len(result.step_times_s))
    if result.status == "nan":
        reason = f"loss or evaluation not finite at step {result.nan_step}"
        return [row | {"status": "nan", "reason": reason}]
    if point.measure.memory:
        batch = task.next_batch(0)
        peak = step_peak_memory(
            model, result.optimizer, batch, task.loss_of, task.device, loop.grad_clip
        )
        row.update(peak_mem_bytes=peak["peak_mem_bytes"], mem_method=peak["method"])
    return [row | {"status": "ok"}]


def train_point(
    variant: str | type[AttentionVariant],
    q_len: int,
    head_dim: int,
    train_cfg: TrainConfig | Mapping[str, Any],
    *,
    causal: bool = True,
    heads: int = 1,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    device: str = "cpu",
    memory: bool = True,
) -> Any:
    """A training point for :func:`measure` without the app (tests, notebooks).

    Args:
        variant: A registered variant's name, or its class.
        q_len: Sequence length (= ``kv_len``).
        head_dim: Head dimension; the model's width is ``heads * head_dim``.
        train_cfg: The ``train`` block: a :class:`TrainConfig` or its fields as a mapping
            (checked: :class:`harness.measure.config.ConfigError` names a bad field).
        causal: Causal attention (and MQAR's causal form).
        heads: Attention heads.
        seed: Seed of the model, the variant and the training stream.
        params: The variant's own parameters.
        device: ``cpu`` or ``cuda``.
        memory: Measure one training step's peak memory.

    Returns:
        A :class:`harness.app.point.Point`.
    """
    import variants
    from harness.app.point import Point
    from harness.measure.config import MeasureConfig

    cls = variants.get_class(variant) if isinstance(variant, str) else variant
    cfg = train_cfg if isinstance(train_cfg, TrainConfig) else TrainConfig(**train_cfg)
    return Point(
        variant_cls=cls,
        task="train",
        variant=cls.name,
        params=dict(params or {}),
        batch=cfg.batch,
        heads=heads,
        q_len=q_len,
        kv_len=q_len,
        head_dim=head_dim,
        dtype="float32",
        device=device,
        causal=causal,
        inputs=cfg.task,
        inputs_params={},
        seed=seed,
        seeds=[seed],
        passes=["fwd_bwd"],
        measure=MeasureConfig(memory=memory),
        task_cfg=cfg,
    )


def describe_row(row: Mapping[str, Any]) -> str:
    """One line for a sweep's progress output.

    Example: ``mqar n=64 lr=0.003: accuracy 0.99 (best 0.99) in 400 steps, 21.5 ms/step``.
    """
    if row.get("status") != "ok":
        return f"{row.get('status')}: {(row.get('reason') or '')[:80]}"
    return (
        f"{row.get('train_task')} n={row.get('q_len')} lr={row.get('lr'):g}: "
        f"{row.get('metric')} {row.get('final_eval'):.4g} (best {row.get('best_eval'):.4g}) "
        f"in {row.get('steps_run')} steps, {row.get('time_ms'):.3g} ms/step"
    )
