"""Attention statistics of the real model, and the ``structured`` input fitted to them.

What a reader needs to trust a synthetic input is that its attention looks like a real model's.
Three statistics say how attention is spread, each averaged over rows (queries):

- ``entropy``: the row entropy of the softmax weights, in nats (``log n`` is uniform attention);
- ``mass_by_distance``: the weight a row puts at each query-key distance ``|i - j|``, in the bins
  of :data:`DISTANCE_BINS` (``0``, ``1``, ``2-3``, ..., ``256+``; positions bottom-right
  aligned);
- ``sink``: the weight on the first key (BERT's [CLS], an attention sink);

and one of the values: ``v_mean``, the squared norm of the mean value vector over the keys
relative to the mean squared norm (0 for centred values, 1 when every value is the same).

:func:`real_model_stats` measures them on all-MiniLM-L6-v2 (every layer and head) on pydoc
passages; :func:`fit_structured` fits the ``structured`` generator's parameters to them, one
parameter set per quarter of the heads sorted by entropy (sharp to broad), so the fitted input
mixes kinds of head as the model does. Run once; it writes the Hydra config::

    python -m harness.minilm.stats --out conf/inputs/structured.yaml

The statistics of the fitted generator are :func:`generator_stats`, which needs no model.
"""

from __future__ import annotations

import argparse
import datetime
import math
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from harness.measure.inputs import make_inputs

#: Lower edges of the query-key distance bins; the last bin is open (``256+``).
DISTANCE_EDGES: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)
#: Bin labels, in order.
DISTANCE_BINS: tuple[str, ...] = tuple(
    str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}"
    for lo, hi in zip(DISTANCE_EDGES[:-1], DISTANCE_EDGES[1:])
) + (f"{DISTANCE_EDGES[-1]}+",)
#: Head types of the fitted input: quarters of the model's heads sorted by row entropy.
HEAD_TYPES = 4
#: The fit's length, head dimension and number of draws per evaluation (seeded).
FIT_LEN, FIT_HEAD_DIM, FIT_DRAWS = 512, 32, 4
STAT_KEYS = ("entropy", "mass_by_distance", "sink", "v_mean")


def attention_stats(q: Tensor, k: Tensor, v: Tensor) -> dict[str, Tensor]:
    """Per-head statistics of softmax attention ``softmax(q k^T / sqrt(d))`` (non-causal).

    Args:
        q: ``(B, H, Nq, D)``.
        k: ``(B, H, Nk, D)``.
        v: ``(B, H, Nk, Dv)``.

    Returns:
        ``entropy (H,)``, ``mass_by_distance (H, bins)``, ``sink (H,)``, ``v_mean (H,)``:
        means over the batch and the query rows, in float64.
    """
    nq, nk = q.shape[-2], k.shape[-2]
    pos_q = torch.arange(nq) + (nk - nq)  # bottom-right aligned, the suite's convention
    dist = (pos_q[:, None] - torch.arange(nk)[None, :]).abs()  # (Nq, Nk)
    bins = torch.bucketize(dist, torch.tensor(DISTANCE_EDGES[1:]), right=True)  # (Nq, Nk)
    onehot = torch.nn.functional.one_hot(bins, len(DISTANCE_BINS)).double()  # (Nq, Nk, bins)
    entropy, mass, sink = [], [], []
    for qb, kb in zip(q.double(), k.double()):  # one batch item at a time: (H, N, D)
        p = torch.softmax(qb @ kb.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        entropy.append(-(p * p.clamp_min(1e-300).log()).sum(-1).mean(-1))  # (H,)
        mass.append(torch.einsum("hqk,qkb->hb", p, onehot) / nq)  # (H, bins)
        sink.append(p[..., 0].mean(-1))  # (H,)
    vd = v.double()
    v_mean = vd.mean(-2).pow(2).sum(-1) / vd.pow(2).sum(-1).mean(-1)  # (B, H)
    return {
        "entropy": torch.stack(entropy).mean(0),
        "mass_by_distance": torch.stack(mass).mean(0),
        "sink": torch.stack(sink).mean(0),
        "v_mean": v_mean.mean(0),
    }


def summarize(stats: dict[str, Tensor], heads: Tensor | None = None) -> dict[str, Any]:
    """Mean of per-head statistics over ``heads`` (default all) as plain rounded numbers."""

    def mean(t: Tensor) -> Tensor:
        return (t if heads is None else t[heads]).mean(0)

    return {
        "entropy": round(float(mean(stats["entropy"])), 3),
        "mass_by_distance": [round(float(x), 3) for x in mean(stats["mass_by_distance"])],
        "sink": round(float(mean(stats["sink"])), 3),
        "v_mean": round(float(mean(stats["v_mean"])), 3),
    }


def real_model_stats(length: int = FIT_LEN, texts: int = 16, seed: int = 0) -> dict[str, Tensor]:
    """Per-head statistics of all-MiniLM-L6-v2 (6 layers x 12 heads = 72 heads, layer-major).

    Args:
        length: Tokens per passage (exactly: no padding), at most 512.
        texts: Number of pydoc passages (drawn by ``seed``).
        seed: Chooses the passages.

    Raises:
        RealModelUnavailable: without the ``attnbench[real]`` extra.
    """
    from harness.minilm.capture import capture_qkv  # needs attnbench[real]
    from harness.minilm.limits import NUM_LAYERS
    from harness.minilm.model import encode
    from harness.minilm.texts import pydoc_texts

    batch = encode(pydoc_texts(texts, min_tokens=length, seed=seed), length)
    per_layer = [attention_stats(*capture_qkv(batch, layer)) for layer in range(NUM_LAYERS)]
    return {key: torch.cat([s[key] for s in per_layer]) for key in STAT_KEYS}


def generator_stats(
    params: dict[str, Any],
    heads: int,
    length: int = FIT_LEN,
    draws: int = FIT_DRAWS,
    seed: int = 0,
    head_dim: int = FIT_HEAD_DIM,
) -> dict[str, Tensor]:
    """Per-head statistics of the ``structured`` input with ``params`` (``draws`` seeded
    batch items of ``heads`` heads, self-attention over ``length`` tokens)."""
    shape = (draws, heads, length, length, head_dim)
    q, k, v = make_inputs("structured", *shape, torch.float64, "cpu", seed, **params)
    return attention_stats(q, k, v)


def _loss(stats: dict[str, Any], target: dict[str, Any]) -> float:
    """Squared misfit in units of the tolerances the test states (0.25 nats, 0.02 of mass)."""
    mass = np.subtract(stats["mass_by_distance"], target["mass_by_distance"]) / 0.02
    return float(
        ((stats["entropy"] - target["entropy"]) / 0.25) ** 2
        + (mass**2).sum()
        + ((stats["sink"] - target["sink"]) / 0.02) ** 2
    )


def fit_head_type(target: dict[str, Any], length: int = FIT_LEN) -> dict[str, float]:
    """``structured`` parameters of one head type whose statistics best match ``target``.

    Nelder-Mead over log bandwidth, log gain, sink and log temperature, for shift 0 and 1
    (attend around the query itself, or around the token before it); the same seeded draws at
    every evaluation, so the objective is smooth. ``v_mean`` is the target's, taken as is.
    """
    best: tuple[float, dict[str, float]] | None = None
    for shift in (0, 1):

        def params(x: np.ndarray, shift: int = shift) -> dict[str, float]:
            return {
                "bandwidth": float(np.exp(x[0])),
                "shift": shift,
                "gain": float(np.exp(x[1])),
                "sink": float(max(x[2], 0.0)),
                "temperature": float(np.exp(x[3])),
                "v_mean": target["v_mean"],
            }

        def objective(x: np.ndarray, params=params) -> float:
            return _loss(summarize(generator_stats(params(x), 1, length)), target)

        start = np.array([np.log(4.0), np.log(4.0), 2.0, np.log(1.0)])
        # steps of order one in every coordinate (the default 5% of each is ~0 for log 1 = 0)
        simplex = np.vstack([start, start + np.diag([1.0, 1.0, 2.0, 0.7])])
        result = minimize(
            objective,
            start,
            method="Nelder-Mead",
            options={"initial_simplex": simplex, "maxfev": 400, "xatol": 0.02, "fatol": 0.05},
        )
        if best is None or result.fun < best[0]:
            best = (float(result.fun), params(result.x))
    assert best is not None
    return best[1]


def fit_structured(real: dict[str, Tensor], length: int = FIT_LEN) -> dict[str, list]:
    """Per-head-type parameter lists (sharpest quarter of heads first) fitted to ``real``."""
    order = torch.argsort(real["entropy"])
    groups = torch.tensor_split(order, HEAD_TYPES)
    fitted = [fit_head_type(summarize(real, group), length) for group in groups]
    return {
        key: [round(f[key], 3) if isinstance(f[key], float) else f[key] for f in fitted]
        for key in fitted[0]
    }


def _yaml_stats(stats: dict[str, Any]) -> str:
    return (
        f"{{entropy: {stats['entropy']}, mass_by_distance: {stats['mass_by_distance']}, "
        f"sink: {stats['sink']}, v_mean: {stats['v_mean']}}}"
    )


def config_text(
    params: dict[str, list],
    real: dict[str, Any],
    fitted: dict[str, Any],
    notes: list[str],
    command: str,
    texts: int,
) -> str:
    """The ``inputs/structured.yaml`` Hydra config: parameters, provenance and statistics."""
    lines = [
        "# Structured synthetic attention inputs whose statistics are fitted to a real model's:",
        f"# all-MiniLM-L6-v2 (6 layers x 12 heads) on {texts} pydoc passages of {FIT_LEN} tokens.",
        "# Needs no model and runs at any length; beyond 512 tokens its statistics are an",
        "# extrapolation (distance scales held in tokens), not a measurement. Four head types",
        "# (lists: head h takes element h mod 4) fitted to the four quarters of the model's 72",
        "# heads sorted by row entropy, sharpest first. Generator: harness/measure/inputs.py;",
        "# statistics and fit: harness/minilm/stats.py. Written on "
        f"{datetime.date.today().isoformat()} by",
        f"#   {command}",
        f"# Statistics at {FIT_LEN} tokens, head_dim {FIT_HEAD_DIM}; mass_by_distance in bins of",
        "# |i - j|: " + ", ".join(DISTANCE_BINS) + ":",
        f"#   real model: {_yaml_stats(real)}",
        f"#   this input: {_yaml_stats(fitted)}",
        *(f"#   {line}" for line in notes),
        "# `fit` is not used to draw the inputs: it carries these statistics into every row's",
        "# inputs_params, so results on this input say what it was fitted to.",
        "name: structured",
        *(f"{key}: {value}" for key, value in params.items()),
        "fit:",
        f"  source: all-MiniLM-L6-v2 on {FIT_LEN}-token pydoc text",  # a label: no commas
        "  bins: [" + ", ".join(f"'{b}'" for b in DISTANCE_BINS) + "]",
        f"  real: {_yaml_stats(real)}",
        f"  structured: {_yaml_stats(fitted)}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Measure MiniLM's statistics, fit ``structured`` and write its Hydra config."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the config here (default: print it)")
    parser.add_argument("--texts", type=int, default=16, help="pydoc passages (default 16)")
    args = parser.parse_args(argv)
    real = real_model_stats(FIT_LEN, args.texts)
    params = fit_structured(real)
    heads = 3 * HEAD_TYPES
    notes = []
    for n in (128, 256):  # how the fit carries to shorter lengths (not fitted there)
        r = summarize(real_model_stats(n, args.texts))
        g = summarize(generator_stats(params, heads, n))
        notes.append(
            f"at {n} tokens (not fitted): entropy {r['entropy']} real, {g['entropy']} this input; "
            f"sink {r['sink']} real, {g['sink']}"
        )
    fitted = summarize(generator_stats(params, heads, FIT_LEN, draws=8))
    command = "python -m harness.minilm.stats" + (f" --out {args.out}" if args.out else "")
    text = config_text(params, summarize(real), fitted, notes, command, args.texts)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    print(text, end="")


if __name__ == "__main__":
    main()
