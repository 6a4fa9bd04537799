"""Measure one point: accuracy, time, memory and FLOPs of a variant, one row per pass.

:func:`measure_point` delegates the work to :mod:`~harness.measure.inputs`,
:mod:`~harness.measure.accuracy`, :mod:`~harness.measure.timing`, :mod:`~harness.measure.memory`
and :mod:`~harness.measure.env`. It never raises for a failing point: the failure becomes the
rows' ``status`` (``unsupported``, ``over_budget``, ``oom``, ``nan``, ``error``) with a
``reason``, memory is released, and the sweep goes on. Decisions recorded here:

* Rows explain themselves: ``params`` is the built variant's ``config()`` (a dict), and
  ``exact``, ``randomized``, ``knob``, ``knob_value`` come from its class
  (:func:`harness.measure.factory.describe`); ``trained`` is the variant's ``trained`` flag when
  it has trainable parameters, else null.
* FLOPs follow the variant's own counts: ``fwd`` its ``flops``, ``bwd`` its ``backward_flops``
  (twice the forward where a variant predates that method), ``fwd_bwd`` their sum;
  ``tflops = flops / time``.
* Accuracy describes the point, so its columns (``rel_err``, ``cosine`` and the baselines on the
  forward output, ``grad_rel_err`` on the gradients, the effective-matrix divergences,
  ``ref_rows``) are repeated on each of its rows. Randomised variants are rebuilt for every seed
  in ``seeds`` and reported as mean and std; deterministic ones run once (``seeds = [seed]``,
  std 0).
* ``setup_ms`` is the variant's ``setup()`` plus its first (cold) forward call, timed once before
  anything else; it is the same on the point's rows. The cold excess is ``setup_ms - time_ms``.
* CPU memory budget, pass by pass (:mod:`harness.measure.budget`): a pass whose estimate (the
  variant's model of that pass, ``analytic_mem_bytes`` in its row, plus inputs, gradients and
  the reference) exceeds ``measure.memory_budget_gb`` is not run and reads ``over_budget``, its
  reason naming the estimate and the budget (``memory_budget_bytes``). ``oom`` is kept for a
  real allocation failure. The gradient accuracy check runs only when the backward estimate
  fits (``notes`` says so otherwise).
* Progress: the seeds of the accuracy loop and the passes of the timing loop show a ``tqdm`` bar
  on stderr when it is a terminal (:func:`progress`); in logs and under launchers they print
  nothing (each point's one summary line comes from :mod:`harness.app.main`).
* ``notes`` (an extra column after :data:`harness.analysis.rows.COLUMNS`) says how memory was
  measured.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from harness.analysis.rows import DTYPES, PASSES
from harness.measure import accuracy, budget, env, memory, timing
from harness.measure.factory import Factory, describe
from harness.measure.inputs import check_params, make_inputs
from variants.base import AttentionVariant, check_choice

#: The point's shape fields, in the order of a variant's ``flops(batch, heads, q_len, ...)``.
SHAPE = ("batch", "heads", "q_len", "kv_len", "head_dim")
#: Point fields copied into every row as they are.
POINT_COLUMNS = ("variant", "device", *SHAPE, "causal", "inputs", "seed")
DEFAULT_MEASURE: dict[str, Any] = {
    "accuracy": True,
    "timing": True,
    "memory": True,
    "attn_matrix_max_n": 2048,
    "min_run_time": 0.2,
    "flush_l2": False,
    "memory_budget_gb": 16.0,
    "reference_max_work": 1e12,
    "threads": None,
}


def progress(items: list, desc: str) -> Any:
    """``items`` wrapped in a tqdm bar on a terminal (stderr), unchanged otherwise."""
    if len(items) < 2 or not sys.stderr.isatty():
        return items
    return tqdm(items, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)


class NonFinite(Exception):
    """A pass produced NaN or Inf."""


def classify(exc: BaseException) -> tuple[str, str]:
    """Row ``(status, reason)`` for an exception: ``oom``, ``nan`` or ``error``."""
    msg = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ""
    if isinstance(exc, NonFinite):
        return "nan", msg
    cuda_oom = getattr(torch.cuda, "OutOfMemoryError", ())
    lowered = msg.lower()
    if (
        isinstance(exc, MemoryError)
        or (cuda_oom and isinstance(exc, cuda_oom))
        or "defaultcpuallocator: can't allocate" in lowered
        or "out of memory" in lowered
    ):
        return "oom", f"{type(exc).__name__}: {msg}"
    return "error", f"{type(exc).__name__}: {msg}"


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    return getattr(torch, check_choice(None, "dtype", name, DTYPES, error=ValueError))


def pass_flops(variant: AttentionVariant, shape: tuple[int, ...], causal: bool) -> dict:
    """FLOPs of each pass: the variant's forward and backward counts, and their sum.

    A variant class without ``backward_flops`` (a plugin written before it) counts its backward
    as twice its forward, the base class's default.
    """
    fwd = int(variant.flops(*shape, causal))
    backward = getattr(variant, "backward_flops", None)
    bwd = int(backward(*shape, causal)) if callable(backward) else 2 * fwd
    return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}


def _base_row(point: dict[str, Any], pass_name: str) -> dict[str, Any]:
    """The row of one pass before anything is measured: the point's fields as the caller gave
    them (the variant's class facts included, when the point carries them)."""
    try:
        inputs_params = check_params(point["inputs"], dict(point.get("inputs_params") or {}))
    except ValueError:
        inputs_params = dict(point.get("inputs_params") or {})
    row = {f: point.get(f) for f in POINT_COLUMNS}
    row.update({f: point.get(f) for f in ("exact", "randomized", "knob", "knob_value")})
    row.update(
        params=dict(point.get("params") or {}),
        inputs_params=inputs_params,
        dtype=str(point.get("dtype")).replace("torch.", ""),
        status=None,
        reason=None,
    )
    row["pass"] = pass_name
    return row


def _variant_columns(variant: AttentionVariant) -> dict[str, Any]:
    """``params`` (the built variant's config), the columns its class decides and ``trained``
    (whether its trainable parameters were fitted; null for a variant without any)."""
    params = variant.config()
    trainable = any(p.requires_grad for p in variant.parameters())
    trained = getattr(variant, "trained", None) if trainable else None
    return {"params": params, **describe(type(variant), params), "trained": trained}


def _finite(value: Any) -> bool:
    tensors = value if isinstance(value, (tuple, list)) else (value,)
    return all(bool(torch.isfinite(t).all()) for t in tensors if isinstance(t, torch.Tensor))


def _ref_rows(point: dict[str, Any], m: dict[str, Any], backward: bool) -> int | None:
    """Query rows the float64 reference may cover at this point (``None``: all)."""
    shape = tuple(point[f] for f in SHAPE)
    work = accuracy.reference_flops(*shape, backward=backward)
    return accuracy.reference_rows(work, point["q_len"], m["reference_max_work"])


def _accuracy(variant, factory, point, m, q, k, v, backward: bool) -> dict[str, Any]:
    seeds = list(point.get("seeds") or [point["seed"]]) if variant.randomized else [point["seed"]]
    ref_rows = _ref_rows(point, m, backward)
    rows = None if ref_rows is None else accuracy.sample_rows(q.shape[-2], ref_rows, point["seed"])
    runs = []
    for seed in progress(seeds, f"{variant.name} accuracy seeds"):
        model = variant if seed == point["seed"] else factory(seed).to(point["device"])
        if model is not variant:
            model.setup(q, k, v, point["causal"])
        runs.append(
            accuracy.accuracy_once(
                model,
                q,
                k,
                v,
                point["causal"],
                model.softmax_scale(q.shape[-1]),
                seed,
                backward,
                m["attn_matrix_max_n"],
                rows,
            )
        )
    out: dict[str, Any] = accuracy.summarize(runs)
    out.update(seeds=json.dumps(seeds), ref_rows=ref_rows)
    return out


def _measure_pass(name: str, fn: Callable[[], Any], row: dict, point: dict, m: dict) -> None:
    device = point["device"]
    if not _finite(fn()):  # the pass's own warm-up call doubles as the NaN/Inf check
        raise NonFinite(f"{name}: output or gradients contain NaN/Inf")
    if m["timing"]:
        flush = bool(m["flush_l2"]) and torch.device(device).type == "cuda"
        row.update(timing.time_callable(fn, device, m["min_run_time"], flush_l2=flush))
        row["l2_flushed"] = flush if torch.device(device).type == "cuda" else None
        row["tflops"] = row["flops"] / (row["time_ms"] * 1e-3) / 1e12
    if m["memory"]:
        mem = memory.peak_memory(fn, device)
        row["peak_mem_bytes"] = mem["peak_mem_bytes"]
        note = f"peak memory method: {mem['method']}"
        row["notes"] = f"{row['notes']}; {note}" if row.get("notes") else note
        if mem["method"] == "profiler" and memory.rss_available():
            # The RSS figure is a side note: a kernel that races the high-water-mark reset
            # (seen on this CI machine) loses the note, never the row.
            try:
                rss = memory.peak_memory(fn, device, method="rss")["peak_mem_bytes"]
                row["notes"] += f"; resident-set peak {rss / 2**20:.1f} MiB"
            except OSError as exc:
                row["notes"] += f"; resident-set peak unavailable ({exc})"
    row["status"] = "ok"


def _apply_budget(variant, point: dict, m: dict, rows: dict, size: int) -> bool:
    """Mark the passes whose estimate exceeds the CPU memory budget ``over_budget``.

    Returns whether a backward pass fits (the gradient accuracy check runs only then).
    """
    limit = m["memory_budget_gb"]
    if torch.device(point["device"]).type != "cpu" or limit is None:
        return True
    shape, causal = tuple(point[f] for f in SHAPE), point["causal"]

    def estimate(name: str) -> int:
        ref_rows = _ref_rows(point, m, backward=name != "fwd") if m["accuracy"] else None
        return budget.estimate_bytes(variant, shape, causal, size, name, m, ref_rows)

    for name, row in rows.items():
        row["memory_budget_bytes"] = int(limit * 1e9)
        if row["status"] is None and (needed := estimate(name)) > limit * 1e9:
            model = row["analytic_mem_bytes"]
            row.update(
                status="over_budget",
                reason=budget.over_budget_reason(name, needed, model, limit),
            )
    return estimate("fwd_bwd") <= limit * 1e9


def _run(point: dict[str, Any], factory: Factory, m: dict[str, Any], rows: dict) -> None:
    device, causal, dtype = point["device"], point["causal"], _dtype(point["dtype"])
    shape = tuple(point[f] for f in SHAPE)
    variant = factory(point["seed"]).to(device)
    flops = pass_flops(variant, shape, causal)
    for name, row in rows.items():
        row.update(
            _variant_columns(variant),
            analytic_mem_bytes=budget.pass_model_bytes(
                variant, shape, causal, dtype.itemsize, name
            ),
            flops=flops[name],
            matmul_tflops=env.matmul_tflops(device, dtype) if m["timing"] else None,
            matmul_tflops_bf16=env.matmul_tflops_bf16(device) if m["timing"] else None,
        )
    q, k, v = make_inputs(
        point["inputs"], *shape, dtype, device, point["seed"], **(point.get("inputs_params") or {})
    )
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
    if all(row["status"] for row in rows.values()):
        return
    backward_fits = _apply_budget(variant, point, m, rows, dtype.itemsize)
    if all(row["status"] for row in rows.values()):
        return
    setup_ms = timing.time_once_ms(lambda: variant.setup(q, k, v, causal), device)
    with torch.no_grad():
        first: dict[str, Any] = {}
        setup_ms += timing.time_once_ms(lambda: first.update(out=variant(q, k, v, causal)), device)
    if not _finite(first.pop("out")):
        raise NonFinite("fwd: output contains NaN/Inf")
    # re-read the parameters: some are resolved by setup() (longformer's backend for `auto`)
    common: dict[str, Any] = {"setup_ms": setup_ms, **_variant_columns(variant)}
    if m["accuracy"]:
        grad_check = variant.supports_backward and backward_fits
        common.update(_accuracy(variant, factory, point, m, q, k, v, grad_check))
        if variant.supports_backward and not backward_fits:
            common["notes"] = "gradient accuracy not measured: backward estimate over budget"
    pending = {name: row for name, row in rows.items() if row["status"] is None}
    for row in pending.values():
        row.update(common)
    out_shape = (*shape[:3], shape[4])  # (B, H, Nq, Dv)
    grad_out = accuracy.upstream_grad(torch.Size(out_shape), dtype, device, point["seed"])
    for name, row in progress(list(pending.items()), f"{variant.name} passes"):
        try:
            fn = timing.pass_callable(name, variant, q, k, v, causal, grad_out)
            _measure_pass(name, fn, row, point, m)
        except Exception as exc:  # one failing pass must not stop the others
            row["status"], row["reason"] = classify(exc)
            traceback.clear_frames(exc.__traceback__)
        finally:
            fn = None  # drop the saved graph of "bwd" before the next pass is measured
            memory.release(device)


def measure_point(point: dict[str, Any], factory: Factory) -> list[dict[str, Any]]:
    """Measure one point and return one row per pass.

    Args:
        point: The resolved measurement point (variant, params, shape, dtype, device, causal,
            inputs, inputs_params, seed, seeds, passes, measure; optionally exact, randomized,
            knob, knob_value, which the built variant's class overrides) as a mapping, e.g.
            :meth:`harness.app.point.Point.as_dict`.
        factory: ``factory(seed) -> AttentionVariant`` building the variant for this point.

    Returns:
        One row per pass in ``point["passes"]`` with every column it can fill; ``run_id``,
        ``experiment`` and ``point_id`` are left to the caller.
    """
    m = {**DEFAULT_MEASURE, **(point.get("measure") or {})}
    passes = list(point.get("passes") or PASSES)
    rows = {name: _base_row(point, name) for name in passes}
    if missing := env.device_unavailable(str(point["device"])):  # before any work
        facts = env.environment("cpu") | {"device_name": None}
        for row in rows.values():
            row.update(facts, status="unsupported", reason=missing)
        return list(rows.values())
    try:
        env.set_threads(m["threads"])
        facts = env.environment(point["device"])  # once: on CUDA it runs nvidia-smi
        for row in rows.values():
            row.update(facts)
        if any(name not in PASSES for name in passes):
            raise ValueError(f"passes={passes!r}: each must be one of {', '.join(PASSES)}")
        _run(point, factory, m, rows)
    except Exception as exc:  # every failure becomes a row
        status, reason = classify(exc)
        traceback.clear_frames(exc.__traceback__)
        fallback = env.environment("cpu") | {"device_name": None}
        for row in rows.values():
            row.update({key: val for key, val in fallback.items() if row.get(key) is None})
            if row["status"] is None:
                row.update(status=status, reason=reason)
    finally:
        memory.release(point.get("device"))
    return list(rows.values())
