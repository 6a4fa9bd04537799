"""One training point: a tiny transformer with the variant inside, trained on one task.

:func:`measure_train_point` is what the app runs for ``task: train``. The point's ``train``
block (:data:`TRAIN_DEFAULTS`; documented in ``conf/experiment/train.yaml``) names the task
(``mqar`` or ``chars``), its parameters, the optimisation and the model's depth; the model's width
is the point's ``heads * head_dim`` and its length the point's ``q_len`` (= ``kv_len``), the
shape the app's factory builds the variant for. MQAR's form follows the point's ``causal``
flag: ``causal`` (Zoology's layout, causal attention) or ``bidirectional`` (the no-leak layout,
attention everywhere); character modelling is causal only.

The row carries the row contract's columns (``exact``, ``randomized``, ``knob``,
``knob_value``, ``params`` as a dict) plus ``task`` = "train", ``train_task``, ``task_params``,
``model``, ``lr``, ``steps``, ``steps_run``, ``nan_step``, ``metric``, ``final_eval``,
``best_eval``, ``final_accuracy`` / ``best_accuracy`` (MQAR) or ``final_bpc`` / ``best_bpc``
(chars), ``steps_to_50`` / ``steps_to_90`` / ``steps_to_99`` (MQAR: the first evaluation at or
above that accuracy), ``chance``, ``curve`` (``[[step, value], ...]`` from step 0: the learning
curve, in the row itself), ``time_ms`` (median time of one training step: forward, backward,
clipping and the AdamW update), ``time_iqr_ms``, ``repeats`` (steps timed), ``peak_mem_bytes``
(one training step, :func:`harness.measure.memory.peak_memory`), ``mem_method``, ``train_loss``,
``train_time_s`` and the parameter counts ``n_params``, ``n_attention_params``,
``n_variant_params``. A variant that cannot run the task is an ``unsupported`` row with the
reasons; a diverged run is a ``nan`` row with the step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from harness.train.loop import LoopConfig, TrainResult, step_peak_memory, train
from harness.train.model import ModelConfig, TinyTransformer, parameter_counts
from harness.train.tasks import TASKS, make_task
from variants.base import AttentionVariant, check_int

#: Defaults of the ``train:`` config block.
TRAIN_DEFAULTS: dict[str, Any] = {
    "task": "mqar",  # mqar | chars
    "lr": 3e-3,
    "steps": 1000,  # largest number of optimizer steps
    "batch": 64,
    "eval_every": 50,
    "target": 0.99,  # MQAR: stop at this eval accuracy (null: never); chars ignores it
    "warmup": 50,
    "min_lr_ratio": 0.1,
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "layers": 2,
    "mlp_ratio": 0,  # MLP hidden width / model width; 0 = attention-only blocks
    "mqar": {
        "vocab": 256,
        "num_pairs": 4,
        "num_queries": None,
        "power_a": 0.01,
        "eval_examples": 512,
        "eval_seed": 12345,
    },
    "chars": {"eval_chars": 32768},
}
#: MQAR accuracies whose first crossing is recorded as steps_to_<percent>.
THRESHOLDS = (0.5, 0.9, 0.99)


def train_config(point: Mapping[str, Any]) -> dict[str, Any]:
    """The point's ``train`` block over :data:`TRAIN_DEFAULTS`, validated (ValueError)."""
    given = dict(point.get("train") or {})
    unknown = sorted(set(given) - set(TRAIN_DEFAULTS))
    if unknown:
        allowed = ", ".join(TRAIN_DEFAULTS)
        raise ValueError(f"train: unknown key(s) {', '.join(unknown)}; allowed: {allowed}")
    cfg = {**TRAIN_DEFAULTS, **given}
    for task in TASKS:
        cfg[task] = {**TRAIN_DEFAULTS[task], **(given.get(task) or {})}
    if cfg["task"] not in TASKS:
        raise ValueError(f"train: task={cfg['task']!r} is not one of {', '.join(TASKS)}")
    lows = {"steps": 1, "batch": 1, "eval_every": 1, "warmup": 0, "layers": 1, "mlp_ratio": 0}
    for field, low in lows.items():
        check_int("train", field, cfg[field], low=low, error=ValueError)
    for field in ("lr", "weight_decay", "grad_clip", "min_lr_ratio"):
        value = cfg[field]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"train: {field}={value!r} must be a number >= 0")
    if cfg["lr"] <= 0:
        raise ValueError(f"train: lr={cfg['lr']!r} must be > 0")
    return cfg


def _base_row(point: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The row's identifying columns, from the point alone (before anything is built)."""
    import variants
    from harness.measure.factory import describe

    params = dict(point.get("params") or {})
    try:
        facts = describe(variants.get_class(str(point.get("variant"))), params)
    except Exception:  # noqa: BLE001 - an unknown variant still gets a row
        facts = describe(None, params)
    n = point.get("q_len")
    return {
        "task": "train",
        "train_task": cfg.get("task"),
        "variant": point.get("variant"),
        "params": params,
        **{key: point.get(key, value) for key, value in facts.items()},
        "device": str(point.get("device") or "cpu"),
        "dtype": str(point.get("dtype") or "float32"),
        "heads": point.get("heads"),
        "head_dim": point.get("head_dim"),
        "q_len": n,
        "kv_len": point.get("kv_len", n),
        "causal": bool(point.get("causal")),
        "seed": int(point.get("seed") or 0),
        "pass": "train",
        "batch": cfg.get("batch"),
        "lr": cfg.get("lr"),
        "steps": cfg.get("steps"),
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


def _loop_config(cfg: Mapping[str, Any], metric: str) -> LoopConfig:
    accuracy = metric == "accuracy"
    return LoopConfig(
        steps=cfg["steps"],
        lr=float(cfg["lr"]),
        warmup=cfg["warmup"],
        min_lr_ratio=float(cfg["min_lr_ratio"]),
        weight_decay=float(cfg["weight_decay"]),
        grad_clip=float(cfg["grad_clip"]),
        eval_every=cfg["eval_every"],
        target=cfg["target"] if accuracy else None,
        higher_is_better=accuracy,
    )


def measure_train_point(
    point: Mapping[str, Any], factory: Callable[[int], AttentionVariant]
) -> list[dict[str, Any]]:
    """Train one model with the point's variant and return its row (see the module docstring).

    Args:
        point: The resolved point: ``variant``, ``params``, ``device``, ``dtype``, ``heads``,
            ``head_dim``, ``q_len``, ``kv_len``, ``causal``, ``seed``, ``knob``,
            ``knob_value``, ``measure`` (``memory``, ``threads``) and the ``train`` block.
        factory: ``factory(seed) -> AttentionVariant`` built for ``kv_len`` and ``head_dim``;
            called once per block with seed ``100 * seed + block``.

    Returns:
        One row; failures are rows with status unsupported, nan or error and the reason.
    """
    from harness.measure.env import environment, set_threads

    try:
        cfg = train_config(point)
    except ValueError as exc:
        return [_base_row(point, {}) | {"status": "error", "reason": str(exc)}]
    row = _base_row(point, cfg)
    measure = dict(point.get("measure") or {})
    set_threads(measure.get("threads"))
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
        shape = ModelConfig(
            task.vocab, n, heads * head_dim, heads, cfg["layers"], cfg["mlp_ratio"]
        )
        model = TinyTransformer(shape, lambda block: factory(100 * row["seed"] + block))
    except Exception as exc:  # noqa: BLE001 - a bad task or variant is a row, the sweep goes on
        return [row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}]
    first = model.variants()[0]
    row.update(params=first.config(), exact=first.exact, randomized=first.randomized)
    if first.knob is not None:
        row.update(knob=first.knob, knob_value=first.config().get(first.knob))
    row["model"] = {k: getattr(shape, k) for k in ("vocab", "width", "heads", "layers")}
    row["model"]["mlp_ratio"] = shape.mlp_ratio
    row.update(parameter_counts(model))
    reasons = task.unsupported_reasons(first, heads, head_dim)
    if reasons:
        return [row | {"status": "unsupported", "reason": "; ".join(reasons)}]
    loop = _loop_config(cfg, task.metric)
    model.to(row["device"])
    started = time.perf_counter()
    try:
        label = f"{row['variant']} {task.name} n={n} lr={cfg['lr']:g}"
        result = train(
            model, task.next_batch, task.loss_of, task.evaluate, loop, task.device, label
        )
    except Exception as exc:  # noqa: BLE001 - e.g. a variant failing in backward
        return [row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}]
    time_ms, iqr_ms = result.time_per_step_ms()
    row.update(_summary(result, task.metric), train_time_s=time.perf_counter() - started)
    row.update(steps_run=result.steps_run, nan_step=result.nan_step, train_loss=result.last_loss)
    row.update(time_ms=time_ms, time_iqr_ms=iqr_ms, repeats=len(result.step_times_s))
    if result.status == "nan":
        reason = f"loss or evaluation not finite at step {result.nan_step}"
        return [row | {"status": "nan", "reason": reason}]
    if measure.get("memory", True):
        batch = task.next_batch(0)
        peak = step_peak_memory(
            model, result.optimizer, batch, task.loss_of, task.device, loop.grad_clip
        )
        row.update(peak_mem_bytes=peak["peak_mem_bytes"], mem_method=peak["method"])
    return [row | {"status": "ok"}]


def train_point(
    variant: str,
    q_len: int,
    head_dim: int,
    train_block: Mapping[str, Any],
    *,
    causal: bool = True,
    heads: int = 1,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    device: str = "cpu",
    memory: bool = True,
) -> dict[str, Any]:
    """A point for :func:`measure_train_point` without the app (tests, notebooks).

    The app resolves the same keys from its config (``train`` is the config's ``train:``).
    """
    return {
        "variant": variant,
        "params": dict(params or {}),
        "device": device,
        "dtype": "float32",
        "heads": heads,
        "head_dim": head_dim,
        "q_len": q_len,
        "kv_len": q_len,
        "causal": causal,
        "seed": seed,
        "measure": {"memory": memory},
        "train": dict(train_block),
    }


def describe_row(row: Mapping[str, Any]) -> str:
    """One line for a sweep's progress output (the app's per-point line; no report uses it).

    Example: ``mqar n=64 lr=0.003: accuracy 0.99 (best 0.99) in 400 steps, 21.5 ms/step``.
    """
    if row.get("status") != "ok":
        return f"{row.get('status')}: {(row.get('reason') or '')[:80]}"
    return (
        f"{row.get('train_task')} n={row.get('q_len')} lr={row.get('lr'):g}: "
        f"{row.get('metric')} {row.get('final_eval'):.4g} (best {row.get('best_eval'):.4g}) "
        f"in {row.get('steps_run')} steps, {row.get('time_ms'):.3g} ms/step"
    )
