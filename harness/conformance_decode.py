"""Conformance checks of grouped-query heads and of the decode form (prefill, then step).

:func:`check_grouped_heads`: with ``kv_heads`` of ``heads`` (2 and 1 of 4), the variant either
refuses with a reason or gives what it gives with k and v repeated to the query heads (exact
variants: the float64 reference); a ``kv_heads`` that does not divide ``heads`` is refused,
naming ``kv_heads``. :func:`check_decode`: a prompt prefilled, then stepped one token at a time
and 2..4 at a time, gives the causal forward over the whole sequence, and the measured state is
the analytic one (:meth:`~variants.decode.DecodeForm.state_bytes`) at every step.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from harness.conformance_inputs import Factory, build, make_qkv
from harness.measure.reference import reference_attention
from variants.base import AttentionVariant
from variants.grouped import repeat_kv

#: (batch, heads, q_len, kv_len, head_dim) of the grouped-heads check: self and cross lengths.
GROUPED_SHAPES = ((2, 4, 67, 67, 16), (2, 4, 37, 83, 16))
#: (batch, heads, total tokens, prompt tokens, head_dim) of the decode check.
DECODE_SHAPE = (2, 4, 67, 46, 16)
#: Tokens per step: one at a time, then 2..4 (the last step takes what is left).
SCHEDULES = ((1,), (2, 3, 4))


def _dtypes(module: AttentionVariant) -> list[torch.dtype]:
    return [d for d in (torch.float32, torch.float64) if d in module.supported_dtypes]


def _close(module: AttentionVariant, actual: Tensor, expected: Tensor) -> bool:
    atol, rtol = module.TOLERANCES[actual.dtype]
    return torch.allclose(actual, expected, rtol=rtol, atol=atol)


def _gap(actual: Tensor, expected: Tensor) -> str:
    return f"max abs diff {(actual - expected).abs().max().item():.3e}"


def check_grouped_heads(variant: str | Factory) -> None:
    """Grouped heads are handled correctly or refused with a reason (module docstring)."""
    probe = build(variant, GROUPED_SHAPES[0][3], GROUPED_SHAPES[0][4])
    shapes = GROUPED_SHAPES if probe.supports_cross else GROUPED_SHAPES[:1]
    causals = (False, True) if probe.supports_causal else (False,)
    cases = list(itertools.product(shapes, causals))
    for (shape, causal), kv_heads, dtype in itertools.product(cases, (2, 1), _dtypes(probe)):
        module, twin = build(variant, shape[3], shape[4]), build(variant, shape[3], shape[4])
        q, k, v = make_qkv(shape, seed=8, dtype=dtype, kv_heads=kv_heads)
        reasons = module.not_supported_reasons(q, k, v, causal)
        if module.gqa == "unsupported":
            assert any("kv_heads" in r or "grouped" in r for r in reasons), (
                f"gqa='unsupported' but kv_heads={kv_heads} is not refused: {reasons}"
            )
            continue
        kr, vr = repeat_kv(k, shape[1] // kv_heads), repeat_kv(v, shape[1] // kv_heads)
        if reasons or twin.not_supported_reasons(q, kr, vr, causal):
            continue  # refused for another reason (device, length): nothing to compare
        with torch.no_grad():
            out, repeated = module(q, k, v, causal=causal), twin(q, kr, vr, causal=causal)
        where = f"kv_heads={kv_heads} of {shape[1]}, {causal=}, {shape}, {dtype}"
        assert out.shape == repeated.shape, f"shape {tuple(out.shape)} ({where})"
        assert _close(module, out, repeated), (
            f"grouped heads differ from k, v repeated ({where}): {_gap(out, repeated)}"
        )
        if module.exact:
            ref = reference_attention(q, k, v, causal=causal)
            rel = ((out.double() - ref).norm() / ref.norm()).item()
            bound = module.TOLERANCES[dtype][1]
            assert rel <= bound, f"grouped heads off the reference by rel {rel:.2e} ({where})"
    q, k, v = make_qkv((1, 4, 8, 8, 16), kv_heads=3)
    reasons = probe.not_supported_reasons(q, k, v, False)
    assert any("kv_heads=3" in r for r in reasons), f"kv_heads=3 of 4 not refused: {reasons}"


def _steps(total: int, prompt: int, schedule: tuple[int, ...]) -> list[tuple[int, int]]:
    """``(start, stop)`` of each step from the prompt to the end, cycling ``schedule``."""
    out, start = [], prompt
    for t in itertools.cycle(schedule):
        if start >= total:
            return out
        out.append((start, min(total, start + t)))
        start = out[-1][1]
    return out


def _decode(module, q, k, v, prompt: int, max_len, schedule) -> list[tuple[str, Tensor, int]]:
    """Prefill, then step: ``(what, output, state bytes after it)`` per call."""
    with torch.no_grad():
        out, state = module.prefill(q[:, :, :prompt], k[:, :, :prompt], v[:, :, :prompt], max_len)
        runs = [("prefill", out, state.nbytes(), state.length)]
        for start, stop in _steps(q.shape[-2], prompt, schedule):
            part = slice(start, stop)
            out, state = module.step(q[:, :, part], k[:, :, part], v[:, :, part], state)
            runs.append((f"step {start}:{stop}", out, state.nbytes(), state.length))
    return runs


def check_decode(variant: str | Factory) -> None:
    """Prefill and steps equal the causal forward; measured state bytes equal the analytic ones
    (module docstring). Variants without a decode form must say why."""
    b, h, total, prompt, d = DECODE_SHAPE
    probe = build(variant, total, d)
    q, k, v = make_qkv((b, h, total, total, d), seed=9)
    if not probe.supports_decode:
        reasons = probe.decode_not_supported_reasons(q, k, v)
        assert reasons and all(isinstance(r, str) for r in reasons), "no decode: say why"
        return
    for kv_heads, dtype in itertools.product((h, 2), _dtypes(probe)):
        q, k, v = make_qkv((b, h, total, total, d), seed=9, dtype=dtype, kv_heads=kv_heads)
        module = build(variant, total, d)
        if module.decode_not_supported_reasons(q, k, v):
            continue
        with torch.no_grad():
            full = module(q, k, v, causal=True)  # (B, H, N, Dv)
        size = dtype.itemsize
        for schedule, max_len in itertools.product(SCHEDULES, (total, None)):
            for what, out, nbytes, length in _decode(module, q, k, v, prompt, max_len, schedule):
                where = f"{what}, {schedule=}, {max_len=}, kv_heads={kv_heads}, {dtype}"
                expected = full[:, :, length - out.shape[-2] : length]
                assert out.shape == expected.shape, f"shape {tuple(out.shape)} ({where})"
                assert _close(module, out, expected), (
                    f"decode differs from the causal forward ({where}): {_gap(out, expected)}"
                )
                analytic = [
                    module.state_bytes(b, kv_heads, n, d, element_size=size, heads=h)
                    for n in (prompt if max_len is None else max_len, length, 2 * length)
                ]
                if max_len is not None or what == "prefill":  # allocated for max_len (prompt)
                    assert nbytes == analytic[0], (
                        f"state {nbytes} B, analytic {analytic[0]} B ({where})"
                    )
                else:  # grown by doubling at most: between the analytic sizes of L and 2L
                    assert analytic[1] <= nbytes <= analytic[2], (
                        f"state {nbytes} B outside {analytic[1:]} B after {length} ({where})"
                    )
            assert length == total, f"state.length={length} after {total} tokens ({where})"
