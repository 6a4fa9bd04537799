"""A realmodel row's work and timing columns: attention FLOPs and the paired model times."""

from __future__ import annotations

import statistics
from typing import Any

from harness.minilm.limits import HEAD_DIM, NUM_HEADS, NUM_LAYERS
from variants.base import AttentionVariant, exact_attention_flops


def _flops(variant: AttentionVariant | None, lengths: list[int]) -> int:
    """Attention FLOPs of one pass over the texts (every layer, each text at its length);
    ``None`` for the variant is exact softmax attention (``flops`` is part of every variant's
    interface, as the attention task relies on too)."""
    return sum(
        NUM_LAYERS
        * (
            exact_attention_flops(1, NUM_HEADS, n, n, HEAD_DIM)
            if variant is None
            else variant.flops(1, NUM_HEADS, n, n, HEAD_DIM, False)
        )
        for n in lengths
    )


def work_columns(variant: AttentionVariant, lengths: list[int]) -> dict[str, Any]:
    """``flops`` and ``work_exceeds_exact``: does the approximation do at least exact's work?

    Counted after the call, so the backend that ran decides (Longformer's ``auto``). Exact
    variants get ``None``: the flag is about approximations that save nothing (Nystrom with
    landmarks >= half the tokens costs more than the exact attention it approximates).
    """
    flops, exact_flops = _flops(variant, lengths), _flops(None, lengths)
    exceeds = None if variant.exact else flops >= exact_flops
    return {"flops": flops, "exact_flops": exact_flops, "work_exceeds_exact": exceeds}


def timing_columns(exact_time: dict[str, Any], timing: dict[str, Any]) -> dict[str, Any]:
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
