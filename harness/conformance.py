"""Conformance kit: the checks every attention variant must pass, built-in or plugin.

A plugin's own tests run the same kit as the built-ins::

    from harness.conformance import run_conformance
    def test_my_variant():
        run_conformance("my_variant")               # registry name, or
        run_conformance(MyVariant)                  # the class, or
        run_conformance(lambda **kw: MyVariant(**kw))  # a factory (shape keywords and seed)

Each ``check_*`` function raises ``AssertionError`` with a message on failure, so it can be used
from pytest (``tests/test_conformance.py`` parametrizes every check over
``variants.available()``) or from a script. Variants are built with the harness's own shape
keywords (:func:`harness.measure.factory.shape_kwargs`: ``kv_len``, ``head_dim`` and ``seed``
where accepted).

Checks: output shape, dtype and device; finite outputs on random inputs; causal outputs do not
depend on future keys and values (bottom-right aligned); exact variants match the float64
reference; backward runs and gives finite gradients (exact variants: gradients match the
reference); the same seed gives the same output; cross-attention lengths; grouped-query heads
and the decode form (:mod:`harness.conformance_decode`). The tolerances are the variant's own,
per dtype (``AttentionVariant.TOLERANCES`` and ``GRAD_TOLERANCES``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from harness.conformance_decode import check_decode, check_grouped_heads
from harness.conformance_inputs import CROSS_SHAPE, SELF_SHAPE, Factory, build, make_qkv
from harness.measure.reference import reference_attention, reference_grads, reference_mask
from variants.base import AttentionVariant

__all__ = ["CHECKS", "CROSS_SHAPE", "SELF_SHAPE", "build", "make_qkv", "run_conformance"]


def _runs(module: AttentionVariant, q, k, v, causal: bool) -> bool:
    return not module.not_supported_reasons(q, k, v, causal)


def _cases(module: AttentionVariant) -> list[tuple[tuple, bool]]:
    cases = [(SELF_SHAPE, False)]
    if module.supports_causal:
        cases.append((SELF_SHAPE, True))
    if module.supports_cross:
        cases.append((CROSS_SHAPE, False))
        if module.supports_causal:
            cases.append((CROSS_SHAPE, True))
    return cases


def _runnable(
    variant: str | Factory, cases: list[tuple[tuple, bool]], seed: int, requires_grad: bool = False
) -> Iterator[tuple[AttentionVariant, tuple, bool, Tensor, Tensor, Tensor]]:
    """``(module, shape, causal, q, k, v)`` for each case the variant can run, built for it."""
    for shape, causal in cases:
        module = build(variant, shape[3], shape[4])
        q, k, v = make_qkv(shape, seed=seed, requires_grad=requires_grad)
        if _runs(module, q, k, v, causal):
            yield module, shape, causal, q, k, v


def check_interface(variant: str | Factory) -> None:
    """Class constants are present and typed (tolerances for every supported dtype); flops and
    analytic memory are positive ints."""
    module = build(variant, SELF_SHAPE[2], SELF_SHAPE[4])
    assert isinstance(module, AttentionVariant), f"{module!r} is not an AttentionVariant"
    for attr in ("exact", "supports_causal", "supports_cross"):
        assert isinstance(getattr(module, attr), bool), f"{attr} must be a bool"
    assert isinstance(module.name, str) and module.name, "name must be a non-empty str"
    b, h, n, _, d = SELF_SHAPE
    flops = module.flops(b, h, n, n, d, False)
    assert isinstance(flops, int) and flops > 0, f"flops() must be a positive int, got {flops!r}"
    mem = module.analytic_mem_bytes(b, h, n, n, d, False)
    assert isinstance(mem, int) and mem > 0, f"analytic_mem_bytes must be positive int: {mem!r}"
    q, k, v = make_qkv(SELF_SHAPE)
    reasons = module.not_supported_reasons(q, k, v, False)
    assert isinstance(reasons, list) and all(isinstance(r, str) for r in reasons)
    if module.supports_causal is False:
        assert module.not_supported_reasons(q, k, v, True), "causal must be reported unsupported"
    for table in ("TOLERANCES", "GRAD_TOLERANCES"):
        for dtype in module.supported_dtypes:
            pair = getattr(module, table).get(dtype)
            assert isinstance(pair, tuple) and len(pair) == 2 and min(pair) >= 0, (
                f"{table}[{dtype}] must be (atol, rtol) >= 0, got {pair!r}"
            )
    json_ok = module.config()
    assert isinstance(json_ok, dict)


def check_shape_dtype_device_finite(variant: str | Factory) -> None:
    """Output has shape (B, H, Nq, Dv), the input dtype and device, and no NaN/Inf."""
    cases = _cases(build(variant, SELF_SHAPE[2], SELF_SHAPE[4]))
    for module, shape, causal, q, k, v in _runnable(variant, cases, seed=0):
        out = module(q, k, v, causal=causal)
        b, h, nq, _, d = shape
        assert out.shape == (b, h, nq, d), f"shape {tuple(out.shape)} != {(b, h, nq, d)}"
        assert out.dtype == q.dtype, f"dtype {out.dtype} != {q.dtype}"
        assert out.device == q.device
        assert torch.isfinite(out).all(), f"non-finite output (causal={causal}, shape={shape})"


def check_causal_no_future(variant: str | Factory) -> None:
    """Perturbing keys/values a query may not see leaves that query's output unchanged."""
    probe = build(variant, SELF_SHAPE[2], SELF_SHAPE[4])
    if not probe.supports_causal:
        return
    cases = (
        [(SELF_SHAPE, True), (CROSS_SHAPE, True)] if probe.supports_cross else [(SELF_SHAPE, True)]
    )
    for module, shape, _, q, k, v in _runnable(variant, cases, seed=1):
        nq, nk = shape[2], shape[3]
        cut = nq // 2  # queries [0, cut) see keys j <= i + (nk - nq) <= cut - 1 + nk - nq
        first_hidden = cut + (nk - nq)
        k2, v2 = k.clone(), v.clone()
        gen = torch.Generator().manual_seed(7)
        k2[..., first_hidden:, :] += 3 * torch.randn(
            k2[..., first_hidden:, :].shape, generator=gen
        )
        v2[..., first_hidden:, :] += 3 * torch.randn(
            v2[..., first_hidden:, :].shape, generator=gen
        )
        with torch.no_grad():
            a = module(q, k, v, causal=True)[..., :cut, :]
            b = module(q, k2, v2, causal=True)[..., :cut, :]
        atol, rtol = module.TOLERANCES[q.dtype]
        torch.testing.assert_close(
            a,
            b,
            rtol=rtol,
            atol=atol,
            msg=lambda m, shape=shape: (
                f"causal output depends on future keys/values ({shape}): {m}"
            ),
        )
        assert reference_mask(nq, nk)[:cut, first_hidden:].sum() == 0


def check_exact_matches_reference(variant: str | Factory) -> None:
    """Variants declaring ``exact = True`` match float64 attention: the relative error is at
    most the ``rtol`` of the variant's ``TOLERANCES`` for the inputs' dtype."""
    probe = build(variant, SELF_SHAPE[2], SELF_SHAPE[4])
    if not probe.exact:
        return
    for module, shape, causal, q, k, v in _runnable(variant, _cases(probe), seed=2):
        with torch.no_grad():
            out = module(q, k, v, causal=causal).double()
        ref = reference_attention(q, k, v, causal=causal)
        rel = ((out - ref).norm() / ref.norm()).item()
        bound = module.TOLERANCES[q.dtype][1]
        assert rel <= bound, (
            f"exact variant off by rel {rel:.2e} > {bound:.0e} ({causal=}, {shape})"
        )


def check_backward(variant: str | Factory) -> None:
    """Backward runs and gives finite gradients; exact variants' gradients match the reference
    (relative error at most the ``rtol`` of ``GRAD_TOLERANCES`` for the inputs' dtype)."""
    probe = build(variant, SELF_SHAPE[2], SELF_SHAPE[4])
    if not probe.supports_backward:
        return
    for module, shape, causal, q, k, v in _runnable(variant, _cases(probe), 3, requires_grad=True):
        out = module(q, k, v, causal=causal)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
        out.backward(grad_out)
        for name, t in (("q", q), ("k", k), ("v", v)):
            assert t.grad is not None and torch.isfinite(t.grad).all(), f"d{name} not finite"
        if probe.exact:
            refs = reference_grads(q, k, v, grad_out, causal=causal)
            bound = module.GRAD_TOLERANCES[q.dtype][1]
            for name, t, ref in zip("qkv", (q, k, v), refs):
                rel = ((t.grad.double() - ref).norm() / ref.norm()).item()
                assert rel <= bound, f"d{name} off by rel {rel:.2e} ({causal=}, {shape})"


def check_seed_determinism(variant: str | Factory) -> None:
    """Two instances built with the same seed give the same output on the same inputs."""
    shape = SELF_SHAPE
    a_mod = build(variant, shape[3], shape[4], seed=5)
    b_mod = build(variant, shape[3], shape[4], seed=5)
    q, k, v = make_qkv(shape, seed=6)
    if not _runs(a_mod, q, k, v, False):
        return
    with torch.no_grad():
        a, b = a_mod(q, k, v), b_mod(q, k, v)
    torch.testing.assert_close(a, b, rtol=0, atol=0, msg="same seed gave different outputs")


CHECKS: dict[str, Callable[[str | Factory], None]] = {
    "interface": check_interface,
    "shape_dtype_device_finite": check_shape_dtype_device_finite,
    "causal_no_future": check_causal_no_future,
    "exact_matches_reference": check_exact_matches_reference,
    "backward": check_backward,
    "seed_determinism": check_seed_determinism,
    "grouped_heads": check_grouped_heads,
    "decode": check_decode,
}


def run_conformance(variant: str | Factory) -> None:
    """Run every check on ``variant`` (registry name or factory); raise on the first failure."""
    for check in CHECKS.values():
        check(variant)
