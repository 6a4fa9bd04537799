"""Measure one decode point: prefill, the per-token step, its state and error, one row.

The context is the point's ``kv_len``: the prompt prefilled before the steps (its ``q_len`` is not
used; the row's ``q_len`` is the step's query tokens, ``decode.q_tokens``). The row (``pass`` =
``decode``, ``task`` = ``decode``) holds:

* ``prefill_ms``: one prefill of the prompt (after an untimed warm-up prefill of its first 256
  tokens), into a state allocated for ``cache_len`` tokens; ``setup_ms``: the variant's
  ``setup()``. The engine knobs (``tuned``) are cached tuned values or the variants' defaults:
  the app runs this task with the tuner (:mod:`variants.tuning`) suspended, since the step has
  no knob and a search at 32K tokens costs more than the prefill it would tune.
* ``step_ms``, ``step_iqr_ms`` (also ``time_ms``, ``time_iqr_ms``, ``repeats``): median and IQR
  over the ``steps`` timed steps, each timed alone after ``warmup`` untimed steps;
  ``token_ms = step_ms / q_tokens`` and ``tokens_per_s = batch * q_tokens / step``. Timing is of
  the attention step alone (``timing`` says so); the ``model_*`` columns time a whole stack
  (:mod:`.model`).
* ``state_bytes`` (the variant's model at ``cache_len``) and ``state_bytes_measured``
  (``state.nbytes()`` after the steps).
* ``step_read_bytes``: what one step must read at ``step_context`` (the context in the middle
  of the timed steps); ``achieved_gbs`` that over ``step_ms``, beside ``copy_gbs``, the copy
  bandwidth measured at the point (bytes read and written,
  :func:`harness.measure.env.copy_bandwidth_gbs`), and ``bandwidth_fraction``, their ratio.
* ``decode_rel_err`` (= ``rel_err``), ``decode_max_abs_err``: every step's output against exact
  causal attention in float64 on the same sequence; ``forward_rel_err``: the variant's own
  causal forward (the prefill's output) at as many of the prompt's last rows, against the same
  reference. A decode form as accurate as the forward reads about the same in both.
* ``gqa``: how the variant handles ``kv_heads < heads`` (``native``, ``repeat``), null without
  grouping.

A variant without a decode form (or that cannot decode these inputs) gives an ``unsupported``
row with the reason, never a fallback to recomputing the sequence; an estimate above
``measure.memory_budget_gb`` (CPU) an ``over_budget`` row; a failure ``oom``, ``nan`` or
``error`` (:func:`harness.measure.failures.classify`). A failing model-level measurement leaves
the attention's columns and says why in ``model_reason``.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.analysis.rows import DTYPES
from harness.measure import budget, env, memory, timing
from harness.measure.factory import Factory
from harness.measure.failures import classify
from harness.tasks.decode import model as model_level
from harness.tasks.decode import steps
from harness.tasks.decode.config import DecodeConfig
from variants.base import AttentionVariant, check_choice

if TYPE_CHECKING:
    from harness.app.point import Point

TIMING = (
    "attention step alone (the variant's step on the new tokens' q, k, v; no projections, MLP "
    "or sampling); model_* columns: the whole stack"
)


def _base_row(point: Point, cfg: DecodeConfig) -> dict[str, Any]:
    """The row's identifying columns, from the point alone."""
    return {
        "task": "decode",
        "variant": point.variant,
        "params": dict(point.params or {}),
        **point.facts(),
        "device": point.device,
        "dtype": point.dtype,
        "batch": point.batch,
        "heads": point.heads,
        "kv_heads": point.kv_heads,
        "q_len": cfg.q_tokens,
        "kv_len": point.kv_len,
        "head_dim": point.head_dim,
        "causal": True,
        "inputs": point.inputs,
        "inputs_params": dict(point.inputs_params or {}),
        "seed": point.seed,
        "pass": "decode",
        "q_tokens": cfg.q_tokens,
        "steps": cfg.steps,
        "warmup": cfg.warmup,
        "cache_len": cfg.cache_for(point.kv_len),
        "timing": TIMING,
        "model_depth": cfg.model_depth,
        "model_mlp_ratio": cfg.model_mlp_ratio,
        "status": None,
        "reason": None,
    }


def unsupported_reasons(variant: AttentionVariant, seq: steps.Sequence) -> list[str]:
    """Why the variant cannot decode these inputs (its generic and its decode form's reasons)."""
    q, k, v = seq.span(0, seq.prompt)
    reasons = list(variant.not_supported_reasons(q, k, v, True))
    reasons += variant.decode_not_supported_reasons(q, k, v)
    if not variant.supports_decode and not reasons:
        reasons.append(f"{variant.name}: no decode form (prefill/step)")
    return list(dict.fromkeys(reasons))


def _bandwidth(variant, point: Point, cfg: DecodeConfig, step_ms: float, size: int) -> dict:
    """Bytes a step reads, the bandwidth that achieves, and the copy bandwidth now."""
    context = point.kv_len + (cfg.warmup + cfg.steps // 2) * cfg.q_tokens
    read = variant.step_read_bytes(
        point.batch, point.heads, point.kv_heads, context, point.head_dim, cfg.q_tokens, size
    )
    achieved = read / (step_ms * 1e-3) / 1e9
    copy = env.copy_bandwidth_gbs(point.device)
    return {
        "step_context": context,
        "step_read_bytes": int(read),
        "achieved_gbs": achieved,
        "copy_gbs": copy,
        "bandwidth_fraction": achieved / copy,
    }


def _state_bytes(variant, point: Point, cfg: DecodeConfig, size: int) -> int:
    """The variant's model of the state allocated for ``cache_len`` tokens."""
    cache = cfg.cache_for(point.kv_len)
    return int(
        variant.state_bytes(
            point.batch, point.kv_heads, cache, point.head_dim, size, heads=point.heads
        )
    )


def _step_columns(point: Point, cfg: DecodeConfig, times: list[float]) -> dict[str, Any]:
    """Median and IQR of the timed steps, per token, and tokens per second."""
    stats = timing.summarize(times)
    step_ms, iqr = stats["time_ms"], stats["time_iqr_ms"]
    return {
        "step_ms": step_ms,
        "step_iqr_ms": iqr,
        "time_ms": step_ms,
        "time_iqr_ms": iqr,
        "repeats": stats["repeats"],
        "token_ms": step_ms / cfg.q_tokens,
        "tokens_per_s": point.batch * cfg.q_tokens / (step_ms * 1e-3),
    }


def _over_budget(variant, point: Point, cfg: DecodeConfig, size: int, copies: int) -> str | None:
    """The ``over_budget`` reason where the point's estimate exceeds the CPU budget."""
    limit = point.measure.memory_budget_gb
    if torch.device(point.device).type != "cpu" or limit is None:
        return None
    needed = steps.estimate_bytes(variant, point, cfg, size, copies)
    if needed <= limit * 1e9:
        return None
    state = _state_bytes(variant, point, cfg, size)
    return budget.over_budget_reason("decode", needed, state, limit)


def _run(point: Point, factory: Factory, cfg: DecodeConfig, row: dict[str, Any]) -> None:
    """Build the variant, check it, and measure the point into ``row``."""
    dtype = getattr(torch, check_choice(None, "dtype", point.dtype, DTYPES, error=ValueError))
    size = dtype.itemsize
    variant = factory(point.seed).to(point.device)
    row["params"] = variant.config()
    grouped = point.kv_heads != point.heads
    row["gqa"] = getattr(variant, "gqa", None) if grouped else None
    seq = steps.make_sequence(point, cfg, dtype)
    reasons = unsupported_reasons(variant, seq)
    if reasons:
        row.update(status="unsupported", reason="; ".join(reasons))
        return
    width = model_level.model_width(point, cfg)
    copies = cfg.model_depth if width // point.heads == point.head_dim else 0
    if reason := _over_budget(variant, point, cfg, size, copies):
        row.update(status="over_budget", reason=reason)
        return
    prompt = seq.span(0, point.kv_len)
    row["setup_ms"] = timing.time_once_ms(lambda: variant.setup(*prompt, True), point.device)
    cache_len, rows = cfg.cache_for(point.kv_len), min(cfg.generated, point.kv_len)
    row["prefill_ms"], state, prompt_out = steps.prefill(
        variant, seq, cache_len, point.device, rows
    )
    layers = []
    if cfg.model_depth:  # copies of the prefilled state, before the steps update it
        layers = model_level.layer_states(variant, point, cfg, width, dtype, state)
    times, outputs, state = steps.run_steps(variant, seq, state, cfg, point.device)
    row.update(_step_columns(point, cfg, times))
    step_ms = row["step_ms"]
    row.update(
        state_bytes=_state_bytes(variant, point, cfg, size),
        state_bytes_measured=int(state.nbytes()),
        state_length=getattr(state, "length", None),
    )
    row.update(_bandwidth(variant, point, cfg, step_ms, size), tuned=variant.engine_config())
    del state
    if point.measure.accuracy and not variant.approximates_softmax:  # no error to take
        row["notes"] = f"{variant.name} is not an approximation of softmax attention"
    elif point.measure.accuracy:
        row.update(steps.errors(variant, seq, outputs, prompt_out))
        row["rel_err"] = row["decode_rel_err"]
    del outputs
    row["status"] = "ok"
    if layers:
        try:
            row.update(model_level.measure_model(variant, point, cfg, dtype, layers, step_ms))
        except Exception as exc:  # the attention's numbers stand without the model's
            row["model_reason"] = ": ".join(classify(exc))
            traceback.clear_frames(exc.__traceback__)


def measure(point: Point, factory: Factory, out_dir: Path | None = None) -> list[dict[str, Any]]:
    """Measure one decode point and return its one row (never raises; see the module
    docstring). ``out_dir`` is unused: the task writes rows only."""
    cfg = point.task_cfg if isinstance(point.task_cfg, DecodeConfig) else DecodeConfig()
    row = _base_row(point, cfg)
    if missing := env.device_unavailable(str(point.device)):  # before any work
        row.update(env.environment("cpu") | {"device_name": None})
        row.update(status="unsupported", reason=missing)
        return [row]
    try:
        env.set_threads(point.measure.threads)
        row.update(env.environment(point.device))
        _run(point, factory, cfg, row)
    except Exception as exc:  # every failure becomes the row's status
        row["status"], row["reason"] = classify(exc)
        traceback.clear_frames(exc.__traceback__)
        fallback = env.environment("cpu") | {"device_name": None}
        row.update({key: val for key, val in fallback.items() if row.get(key) is None})
    finally:
        memory.release(point.device)
    return [row]
