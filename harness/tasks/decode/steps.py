"""The attention-alone half of a decode point: its inputs, prefill, timed steps and errors.

One seeded sequence of ``prompt + generated`` tokens is drawn (:func:`make_sequence`); the
prompt is prefilled into a state allocated for the whole sequence, and the generated tokens are
fed ``q_tokens`` at a time to the variant's ``step``: ``warmup`` steps untimed, then ``steps``
steps each timed alone (:func:`harness.measure.timing.time_each`; the state grows by one step
per call, so no call can be repeated). Errors compare the step outputs, and the prefill's (the
variant's causal forward over the prompt) at as many of the prompt's last rows, with exact
causal attention in float64 on the same sequence (:func:`errors`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from harness.measure import accuracy, budget, timing
from harness.measure.failures import NonFinite, finite
from harness.measure.inputs import make_inputs
from harness.tasks.decode.config import DecodeConfig
from variants.base import AttentionVariant

#: Prompt tokens of the untimed warm-up prefill (first calls allocate and pick kernels).
WARM_PREFILL = 256


@dataclasses.dataclass
class Sequence:
    """Prompt and generated tokens of one point: ``q (B, H, L, D)``, ``k, v (B, Hkv, L, D)``."""

    q: Tensor
    k: Tensor
    v: Tensor
    prompt: int
    q_tokens: int

    def span(self, start: int, stop: int) -> tuple[Tensor, Tensor, Tensor]:
        """Tokens ``start:stop`` of q, k and v."""
        return tuple(t[:, :, start:stop] for t in (self.q, self.k, self.v))  # type: ignore[return-value]

    def step_inputs(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """The ``q_tokens`` new tokens of step ``index`` (0 = the first after the prompt)."""
        start = self.prompt + index * self.q_tokens
        return self.span(start, start + self.q_tokens)


def make_sequence(point: Any, cfg: DecodeConfig, dtype: torch.dtype) -> Sequence:
    """The point's seeded inputs over ``kv_len + generated`` tokens (its ``inputs`` generator)."""
    length = point.kv_len + cfg.generated
    q, k, v = make_inputs(
        point.inputs,
        point.batch,
        point.heads,
        length,
        length,
        point.head_dim,
        dtype,
        point.device,
        point.seed,
        kv_heads=point.kv_heads,
        **(point.inputs_params or {}),
    )
    return Sequence(q, k, v, point.kv_len, cfg.q_tokens)


def prefill(
    variant: AttentionVariant, seq: Sequence, cache_len: int, device: str, rows: int
) -> tuple[float, Any, Tensor]:
    """``(prefill_ms, state, out)``: the prompt prefilled once, after a short untimed warm-up
    call; ``out`` is the prefill's output at the prompt's last ``rows`` rows."""
    warm = min(seq.prompt, WARM_PREFILL)
    with torch.no_grad():
        variant.prefill(*seq.span(0, warm), max_len=warm)
        got: dict[str, Any] = {}

        def call() -> None:
            got["out"], got["state"] = variant.prefill(*seq.span(0, seq.prompt), max_len=cache_len)

        ms = timing.time_once_ms(call, device)
    out = got.pop("out")
    if not finite(out):
        raise NonFinite("prefill: output contains NaN/Inf")
    return ms, got["state"], out[:, :, -rows:].clone()


def run_steps(
    variant: AttentionVariant, seq: Sequence, state: Any, cfg: DecodeConfig, device: str
) -> tuple[list[float], list[Tensor], Any]:
    """Warm-up then timed steps; ``(times_ms, outputs of every step, final state)``."""
    outputs: list[Tensor] = []
    holder = {"state": state}

    def step(index: int) -> None:
        out, holder["state"] = variant.step(*seq.step_inputs(index), holder["state"])
        outputs.append(out)

    with torch.no_grad():
        for index in range(cfg.warmup):
            step(index)
        calls = [lambda i=i: step(i) for i in range(cfg.warmup, cfg.warmup + cfg.steps)]
        times = timing.time_each(calls, device)
    if not finite(outputs):
        raise NonFinite("step: output contains NaN/Inf")
    return times, outputs, holder["state"]


def _rel(out: Tensor, ref: Tensor) -> float:
    out64, ref64 = out.detach().double(), ref.detach().double()
    return ((out64 - ref64).norm() / ref64.norm()).item()


def errors(
    variant: AttentionVariant, seq: Sequence, outputs: list[Tensor], prompt_out: Tensor
) -> dict[str, float]:
    """Relative errors against exact causal attention in float64 on the sequence.

    ``decode_rel_err`` and ``decode_max_abs_err``: every step's output at the generated rows;
    ``forward_rel_err``: the prefill's output (the variant's causal forward over the prompt) at
    the prompt's last rows ``prompt_out`` covers.
    """
    length = seq.q.shape[-2]
    scale = variant.softmax_scale(seq.q.shape[-1])
    decoded = torch.cat(outputs, dim=2)  # (B, H, generated, Dv)
    rows = torch.arange(seq.prompt - prompt_out.shape[-2], length)
    ref = accuracy.reference_output(seq.q, seq.k, seq.v, True, scale, rows)
    ref_prompt, ref_decoded = ref[:, :, : prompt_out.shape[-2]], ref[:, :, prompt_out.shape[-2] :]
    return {
        "decode_rel_err": _rel(decoded, ref_decoded),
        "decode_max_abs_err": (decoded.double() - ref_decoded).abs().max().item(),
        "forward_rel_err": _rel(prompt_out, ref_prompt),
    }


def estimate_bytes(
    variant: AttentionVariant, point: Any, cfg: DecodeConfig, size: int, model_copies: int
) -> int:
    """Rough peak bytes of the point: inputs, the state (and the model's copies), the prefill's
    working memory, and the float64 reference."""
    b, h, hkv, d = point.batch, point.heads, point.kv_heads, point.head_dim
    length, cache = point.kv_len + cfg.generated, cfg.cache_for(point.kv_len)
    total = b * (h + 2 * hkv) * length * d * size
    total += variant.state_bytes(b, hkv, cache, d, size, heads=h) * (1 + model_copies)
    n, model = point.kv_len, variant.analytic_mem_bytes
    grouped = budget.grouped_kwargs(model, None if hkv == h else hkv)
    total += model(b, h, n, n, d, True, size, **grouped)
    rows = 2 * cfg.generated
    total += 8 * (2 * b * h * length * d + 2 * b * h * rows * length)  # reference (float64)
    return int(total)
