"""What every point run in MiniLM shares: its row, the checks before the model loads, failures.

:func:`measure_point` is the frame of a MiniLM task's measurement: it starts the row from the
point, builds the variant, hands both to the task and turns any failure into one row with a
status and a reason (:class:`PointFailed` for the task's own refusals). :func:`check_runs`
refuses a point before anything loads; :func:`fidelity` compares embeddings with the exact
model's, beside the exact model's cosine between unrelated texts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from harness.measure.env import environment
from harness.measure.factory import describe
from harness.minilm.adapter import VariantUnsupported
from harness.minilm.embed import Embeddings
from harness.minilm.layerwise import LayerwiseAttention
from harness.minilm.limits import HEAD_DIM, NUM_HEADS
from variants.base import AttentionVariant

Row = dict[str, Any]


class PointFailed(Exception):
    """A point that ends as one row: ``status`` (``error`` unless said) and the message as
    its reason."""

    def __init__(self, reason: str, status: str = "error") -> None:
        super().__init__(reason)
        self.status = status


def base_row(point: Any) -> Row:
    """The row's identity columns before anything runs, from the point's own description (the
    built variant's params and class facts replace it once there is one)."""
    row: Row = {
        "task": point.task,
        "variant": point.variant,
        "params": dict(point.params),
        **point.facts(),
        "device": point.device,
        "dtype": point.dtype,
        "heads": NUM_HEADS,
        "head_dim": HEAD_DIM,
        "causal": False,
        "inputs": "pydoc",
        "seed": point.seed,
        "pass": "fwd",
        "status": None,
        "reason": None,
    }
    return row | environment(point.device)


def variant_columns(variant: AttentionVariant) -> Row:
    """``params`` and the class facts (``exact``, ``knob``, ...) of the variant that runs; a
    :class:`LayerwiseAttention` is described by its layers' class."""
    params = variant.config()
    cls = type(variant.layers[0]) if isinstance(variant, LayerwiseAttention) else type(variant)
    return {"params": params, **describe(cls, params)}


def check_runs(point: Any, variant: AttentionVariant, lengths: list[int]) -> None:
    """Refuse the point before anything loads: :class:`PointFailed` (``unsupported``) unless
    its dtype is float32 (the model's weights) and the variant takes texts of every length in
    ``lengths`` (its own ``not_supported_reasons``, one probe per length)."""
    if point.dtype != "float32":
        raise PointFailed(f"{point.task} runs in float32 only", "unsupported")
    reasons: list[str] = []
    for n in lengths:
        probe = torch.zeros(1, NUM_HEADS, n, HEAD_DIM, device=point.device)  # (1, H, N, D)
        found = variant.not_supported_reasons(probe, probe, probe, False)
        reasons += [r for r in found if r not in reasons]
    if reasons:
        raise PointFailed("; ".join(reasons), "unsupported")


def measure_point(
    point: Any,
    build: Callable[[], AttentionVariant],
    measure: Callable[[Row, AttentionVariant], list[Row]],
) -> list[Row]:
    """The rows of one MiniLM point; never raises for a failing point.

    Args:
        point: The :class:`harness.app.point.Point`.
        build: Makes the point's variant (on its device, in eval mode).
        measure: ``measure(row, variant) -> rows``: the task's measurement, given the row so far
            (:func:`base_row` with :func:`variant_columns`). It adds to ``row`` in place what
            every row of the point carries, so that a failure row has it too.

    Returns:
        ``measure``'s rows, or one row with the columns so far and ``status``/``reason``:
        :class:`PointFailed`'s, ``unsupported`` for :class:`VariantUnsupported`, ``error``
        with the exception's type for anything else.
    """
    row = base_row(point)
    try:
        variant = build()
        row.update(variant_columns(variant))
        return measure(row, variant)
    except PointFailed as exc:
        return [row | {"status": exc.status, "reason": str(exc)}]
    except VariantUnsupported as exc:
        return [row | {"status": "unsupported", "reason": str(exc)}]
    except Exception as exc:  # noqa: BLE001 - a failing point is a row, the sweep goes on
        return [row | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}]


def note(row: Row, text: str) -> None:
    """Append ``text`` to the row's ``notes``."""
    row["notes"] = f"{row['notes']}; {text}" if row.get("notes") else text


def _hidden_rel_err(exact: Embeddings, approx: Embeddings) -> list[float]:
    """Relative Frobenius error of each transformer layer's output over all real tokens."""
    errs = []
    for layer in range(1, len(exact.hidden_states)):
        ref = torch.cat(exact.hidden_states[layer]).double()
        got = torch.cat(approx.hidden_states[layer]).double()
        errs.append(float((got - ref).norm() / ref.norm()))
    return errs


def unrelated_cosine(embeddings: Tensor, lengths: list[int]) -> float:
    """Mean cosine between the embeddings of *different* texts of one length (NaN if no two
    texts share a length): what an embedding cosine of unrelated text comes to.

    Texts of different lengths are never paired: one passage cut to two lengths is one text.
    """
    emb = embeddings.double()
    sims = emb @ emb.T  # (n, n), embeddings are normalised
    same = torch.tensor(lengths)[:, None] == torch.tensor(lengths)[None, :]
    same.fill_diagonal_(False)
    return float(sims[same].mean()) if bool(same.any()) else math.nan


def fidelity(
    exact: Embeddings, approx: Embeddings, lengths: list[int], by_length: list[int]
) -> Row:
    """Embedding cosine to the exact model (``embed_cosine`` mean, ``embed_cosine_min``,
    ``embed_cosine_by_length`` over the texts of each length in ``by_length``; ``lengths``
    is each text's), its reference ``embed_cosine_unrelated`` (the exact model's
    :func:`unrelated_cosine` of the same texts) and ``hidden_rel_err``, the per-layer
    hidden-state error."""
    cosines = (exact.embeddings.double() * approx.embeddings.double()).sum(-1)  # (n_texts,)
    per_length = {
        str(n): float(cosines[[i for i, m in enumerate(lengths) if m == n]].mean())
        for n in by_length
    }
    return {
        "embed_cosine": float(cosines.mean()),
        "embed_cosine_min": float(cosines.min()),
        "embed_cosine_unrelated": unrelated_cosine(exact.embeddings, lengths),
        # JSON text, as in results.csv: only params and inputs_params are read back as mappings
        "embed_cosine_by_length": json.dumps(per_length),
        "hidden_rel_err": json.dumps(_hidden_rel_err(exact, approx)),
    }
