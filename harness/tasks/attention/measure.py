"""Measure one attention point: accuracy, time, memory and FLOPs of a variant, one row per pass.

:func:`measure` delegates the work to :mod:`~harness.measure.inputs`,
:mod:`~harness.measure.accuracy`, :mod:`~harness.measure.timing`, :mod:`~harness.measure.memory`,
:mod:`~harness.measure.env` and, pass by pass, :mod:`.passes`. It never raises for a failing
point: the failure becomes the rows' ``status`` (``unsupported``, ``over_budget``, ``oom``,
``nan``, ``error``) with a ``reason``, memory is released, and the sweep goes on. Decisions:

* Rows explain themselves: ``params`` is the built variant's ``config()`` (a dict), and
  ``exact``, ``randomized``, ``knob``, ``knob_value`` come from its class
  (:func:`harness.measure.factory.describe`); ``trained`` is the variant's ``trained`` flag when
  it has trainable parameters, else null.
* FLOPs follow the variant's own counts: ``fwd`` its ``flops``, ``bwd`` its ``backward_flops``
  (twice the forward where a variant lacks that method), ``fwd_bwd`` their sum;
  ``tflops = flops / time``.
* Accuracy describes the point, so its columns (``rel_err``, ``cosine`` and the baselines on the
  forward output, ``grad_rel_err`` on the gradients, the effective-matrix divergences,
  ``ref_rows``) are repeated on each of its rows. Randomised variants are rebuilt for every seed
  in ``seeds`` and reported as mean and std; deterministic ones run once (``seeds = [seed]``,
  std 0).
* Engine knobs left to the tuner (:mod:`variants.tuning`) are chosen, or read from the cache,
  by ``variant.tune()`` before anything is timed (never inside a timed call); the rows' FLOPs
  and memory models count the values that run, and ``tuned`` records them.
* ``setup_ms`` is the variant's ``setup()`` plus its first (cold) forward call, timed once after
  the tuner and before anything else; it is the same on the point's rows. The cold excess is
  ``setup_ms - time_ms``.
* CPU memory budget, pass by pass (:mod:`harness.measure.budget`): a pass whose estimate (the
  variant's model of that pass, ``analytic_mem_bytes`` in its row, plus inputs, gradients and
  the reference) exceeds ``measure.memory_budget_gb`` is not run and reads ``over_budget``, its
  reason naming the estimate and the budget (``memory_budget_bytes``). ``oom`` is kept for a
  real allocation failure. The gradient accuracy check runs only when the backward estimate
  fits (``notes`` says so otherwise).
* Progress: the seeds of the accuracy loop and the passes of the timing loop show a bar on a
  terminal only (:func:`harness.measure.progress.progress`).
* ``notes`` (an extra column after :data:`harness.analysis.rows.COLUMNS`) says how memory was
  measured.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.analysis.rows import DTYPES, PASSES
from harness.measure import accuracy, budget, env, memory, timing
from harness.measure.factory import Factory, describe
from harness.measure.failures import NonFinite, classify, finite
from harness.measure.inputs import check_params, make_inputs
from harness.measure.progress import progress
from harness.tasks.attention.passes import (
    SHAPE,
    apply_budget,
    grouped_heads,
    measure_pass,
    pass_flops,
    ref_rows,
    shape_of,
)
from variants.base import AttentionVariant, check_choice

if TYPE_CHECKING:
    from harness.app.point import Point

#: Point fields copied into every row as they are.
POINT_COLUMNS = ("variant", "device", *SHAPE, "kv_heads", "causal", "inputs", "seed")


def _base_row(point: Point, pass_name: str) -> dict[str, Any]:
    """The row of one pass before anything is measured: the point's fields and its variant
    class's facts."""
    given = dict(point.inputs_params or {})
    try:
        inputs_params = check_params(point.inputs, dict(given))
    except ValueError:
        inputs_params = given
    row = {f: getattr(point, f, None) for f in POINT_COLUMNS}
    row["kv_heads"] = row["kv_heads"] or point.heads
    row.update(describe(point.variant_cls, dict(point.params or {})))
    row.update(
        params=dict(point.params or {}),
        inputs_params=inputs_params,
        dtype=str(point.dtype).replace("torch.", ""),
        status=None,
        reason=None,
    )
    row["pass"] = pass_name
    return row


def _variant_columns(variant: AttentionVariant) -> dict[str, Any]:
    """``params`` (the built variant's config), the columns its class decides, ``trained``
    (whether its trainable parameters were fitted; null for a variant without any) and
    ``tuned`` (the engine knobs of its last call and whether each was tuned)."""
    params = variant.config()
    trainable = any(p.requires_grad for p in variant.parameters())
    trained = getattr(variant, "trained", None) if trainable else None
    columns = {"params": params, **describe(type(variant), params), "trained": trained}
    return {**columns, "tuned": variant.engine_config()}


def _accuracy(variant, factory, point, q, k, v, backward: bool) -> dict[str, Any]:
    """The accuracy columns of the point: one run per seed of a randomised variant, summarised."""
    seeds = list(point.seeds or [point.seed]) if variant.randomized else [point.seed]
    covered = ref_rows(point, backward)
    rows = None if covered is None else accuracy.sample_rows(q.shape[-2], covered, point.seed)
    runs = []
    for seed in progress(seeds, f"{variant.name} accuracy seeds"):
        model = variant if seed == point.seed else factory(seed).to(point.device)
        if model is not variant:
            model.setup(q, k, v, point.causal)
        runs.append(
            accuracy.accuracy_once(
                model,
                q,
                k,
                v,
                point.causal,
                model.softmax_scale(q.shape[-1]),
                seed,
                backward,
                point.measure.attn_matrix_max_n,
                rows,
            )
        )
    out: dict[str, Any] = accuracy.summarize(runs)
    out.update(seeds=json.dumps(seeds), ref_rows=covered)
    return out


def _known_columns(variant: AttentionVariant, point: Point, rows: dict, dtype) -> None:
    """The columns known before anything runs: the variant's, its models and the matmul rate."""
    m, device, shape = point.measure, point.device, shape_of(point)
    kv_heads = grouped_heads(point)
    flops = pass_flops(variant, shape, point.causal, kv_heads)
    for name, row in rows.items():
        row.update(
            _variant_columns(variant),
            gqa=None if kv_heads is None else getattr(variant, "gqa", None),
            analytic_mem_bytes=budget.pass_model_bytes(
                variant, shape, point.causal, dtype.itemsize, name, kv_heads
            ),
            flops=flops[name],
            matmul_tflops=env.matmul_tflops(device, dtype) if m.timing else None,
            matmul_tflops_bf16=env.matmul_tflops_bf16(device) if m.timing else None,
        )


def _mark_unsupported(variant: AttentionVariant, rows: dict, q, k, v, causal: bool) -> None:
    """Mark ``unsupported`` the passes the variant cannot run on these inputs."""
    reasons = variant.not_supported_reasons(q, k, v, causal)
    if not variant.supports_backward:
        for name in ("bwd", "fwd_bwd"):
            if name in rows:
                rows[name].update(
                    status="unsupported", reason=f"{variant.name}: backward is not supported"
                )
    for row in rows.values():
        if reasons and row["status"] is None:
            row.update(status="unsupported", reason="; ".join(reasons))


def _run(point: Point, factory: Factory, rows: dict) -> None:
    """Build the variant, check it, and measure every pass that may run."""
    device, causal, m = point.device, point.causal, point.measure
    dtype = getattr(torch, check_choice(None, "dtype", point.dtype, DTYPES, error=ValueError))
    shape = shape_of(point)
    variant = factory(point.seed).to(device)
    _known_columns(variant, point, rows, dtype)
    q, k, v = make_inputs(
        point.inputs,
        *shape,
        dtype,
        device,
        point.seed,
        kv_heads=grouped_heads(point),
        **(point.inputs_params or {}),
    )
    _mark_unsupported(variant, rows, q, k, v, causal)
    if all(row["status"] for row in rows.values()):
        return
    backward_fits = apply_budget(variant, point, rows, dtype.itemsize)
    if all(row["status"] for row in rows.values()):
        return
    # the engine knobs chosen (or read from the cache) before setup and any timed call; the
    # FLOP and memory models then count the values that run
    waiting = {name: row for name, row in rows.items() if row["status"] is None}
    backward = backward_fits and any(name != "fwd" for name in waiting)
    if variant.tune(q, k, v, causal, backward=backward):
        _known_columns(variant, point, waiting, dtype)
    setup_ms = timing.time_once_ms(lambda: variant.setup(q, k, v, causal), device)
    with torch.no_grad():
        first: dict[str, Any] = {}
        setup_ms += timing.time_once_ms(lambda: first.update(out=variant(q, k, v, causal)), device)
    if not finite(first.pop("out")):
        raise NonFinite("fwd: output contains NaN/Inf")
    # re-read the parameters: some are resolved by setup() (longformer's backend for `auto`)
    common: dict[str, Any] = {"setup_ms": setup_ms, **_variant_columns(variant)}
    if m.accuracy and not variant.approximates_softmax:  # its own operator: no error to take
        common["notes"] = f"{variant.name} is not an approximation of softmax attention"
    elif m.accuracy:
        grad_check = variant.supports_backward and backward_fits
        common.update(_accuracy(variant, factory, point, q, k, v, grad_check))
        if variant.supports_backward and not backward_fits:
            common["notes"] = "gradient accuracy not measured: backward estimate over budget"
    pending = {name: row for name, row in rows.items() if row["status"] is None}
    for row in pending.values():
        row.update(common)
    out_shape = (*shape[:3], shape[4])  # (B, H, Nq, Dv)
    grad_out = accuracy.upstream_grad(torch.Size(out_shape), dtype, device, point.seed)
    for name, row in progress(list(pending.items()), f"{variant.name} passes"):
        try:
            fn = timing.pass_callable(name, variant, q, k, v, causal, grad_out)
            measure_pass(name, fn, row, device, m)
        except Exception as exc:  # one failing pass must not stop the others
            row["status"], row["reason"] = classify(exc)
            traceback.clear_frames(exc.__traceback__)
        finally:
            fn = None  # drop the saved graph of "bwd" before the next pass is measured
            memory.release(device)


def measure(point: Point, factory: Factory, out_dir: Path | None = None) -> list[dict[str, Any]]:
    """Measure one point and return one row per pass.

    Args:
        point: The resolved point (:class:`harness.app.point.Point`): its variant class, params,
            shape, dtype, device, causal, inputs, inputs_params, seed, seeds, passes and
            ``measure`` settings (a :class:`harness.measure.config.MeasureConfig`).
        factory: ``factory(seed) -> AttentionVariant`` building the variant for this point.
        out_dir: The point's folder (unused: the attention task writes rows only).

    Returns:
        One row per pass in ``point.passes`` with every column it can fill; ``run_id``,
        ``experiment`` and ``point_id`` are left to the caller.
    """
    passes = list(point.passes or PASSES)
    rows = {name: _base_row(point, name) for name in passes}
    if missing := env.device_unavailable(str(point.device)):  # before any work
        facts = env.environment("cpu") | {"device_name": None}
        for row in rows.values():
            row.update(facts, status="unsupported", reason=missing)
        return list(rows.values())
    try:
        env.set_threads(point.measure.threads)
        facts = env.environment(point.device)  # once: on CUDA it runs nvidia-smi
        for row in rows.values():
            row.update(facts)
        if any(name not in PASSES for name in passes):
            raise ValueError(f"passes={passes!r}: each must be one of {', '.join(PASSES)}")
        _run(point, factory, rows)
    except Exception as exc:  # every failure becomes a row
        status, reason = classify(exc)
        traceback.clear_frames(exc.__traceback__)
        fallback = env.environment("cpu") | {"device_name": None}
        for row in rows.values():
            row.update({key: val for key, val in fallback.items() if row.get(key) is None})
            if row["status"] is None:
                row.update(status=status, reason=reason)
    finally:
        memory.release(point.device)
    return list(rows.values())
