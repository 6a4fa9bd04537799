"""Tests of the cosFormer plugin: the suite's conformance kit plus its own float64 formula check.

Run from anywhere once attnbench is installed: ``pytest examples/plugin-variant/tests``. The
conformance kit runs on the class directly, and also through the registry when this package is
installed (its entry point makes ``cosformer`` a registered variant).
"""

from __future__ import annotations

import math

import pytest
import torch
from attnbench_cosformer import CosFormerAttention

import variants
from harness.conformance import CHECKS, run_conformance
from variants import VariantConfigError


def _installed() -> bool:
    return "cosformer" in variants.available()


@pytest.mark.parametrize("check", list(CHECKS))
def test_conformance_on_class(check: str) -> None:
    CHECKS[check](CosFormerAttention)


@pytest.mark.skipif(not _installed(), reason="attnbench-cosformer is not pip-installed")
def test_conformance_through_registry() -> None:
    assert variants.get_class("cosformer") is CosFormerAttention
    run_conformance("cosformer")


def _direct_cosformer(q, k, v, causal: bool, max_len: int | None = None) -> torch.Tensor:
    """The paper's formula written out with an explicit (Nq, Nk) weight matrix, in float64."""
    q, k, v = q.double(), k.double(), v.double()
    nq, nk = q.shape[-2], k.shape[-2]
    m = max_len or max(nq, nk)
    i = torch.arange(nq, dtype=torch.float64)[:, None] + (nk - nq)  # bottom-right alignment
    j = torch.arange(nk, dtype=torch.float64)[None, :]
    reweight = torch.cos(math.pi / 2 * (i - j) / m)  # (Nq, Nk)
    s = torch.relu(q) @ torch.relu(k).transpose(-2, -1) * reweight  # (B, H, Nq, Nk)
    if causal:
        s = s.masked_fill(j > i, 0.0)
    return (s @ v) / s.sum(-1, keepdim=True)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    ("q_len", "kv_len", "chunk_size"),
    [(50, 50, 7), (50, 50, 64), (64, 64, 16), (23, 61, 8), (61, 23, 8)],
)
def test_matches_formula_float64(q_len: int, kv_len: int, chunk_size: int, causal: bool) -> None:
    if causal and q_len > kv_len:
        pytest.skip("causal with q_len > kv_len is unsupported by the suite's convention")
    gen = torch.Generator().manual_seed(0)
    # A positive shift keeps every normaliser well away from 0 so the comparison is tight.
    q = torch.randn(2, 3, q_len, 8, generator=gen, dtype=torch.float64) + 0.5
    k = torch.randn(2, 3, kv_len, 8, generator=gen, dtype=torch.float64) + 0.5
    v = torch.randn(2, 3, kv_len, 8, generator=gen, dtype=torch.float64)
    module = CosFormerAttention(chunk_size=chunk_size)
    torch.testing.assert_close(
        module(q, k, v, causal=causal), _direct_cosformer(q, k, v, causal), rtol=1e-10, atol=1e-12
    )


def test_max_len_and_half_precision() -> None:
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 40, 8, generator=gen, dtype=torch.float64) + 0.5 for _ in "qkv")
    module = CosFormerAttention(max_len=100)
    torch.testing.assert_close(module(q, k, v), _direct_cosformer(q, k, v, False, max_len=100))
    assert module.not_supported_reasons(q, k, v, False) == []
    short = CosFormerAttention(max_len=30)
    assert any("max_len=30" in r for r in short.not_supported_reasons(q, k, v, False))
    out = module(q.half(), k.half(), v.half(), causal=True)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"max_len": -1}, "max_len"),
        ({"eps": 0}, "eps"),
        ({"chunk_size": 2.5}, "chunk_size"),
    ],
)
def test_bad_params_name_the_field(params: dict, field: str) -> None:
    with pytest.raises(VariantConfigError, match=f"cosformer: {field}="):
        CosFormerAttention(**params)


def test_flops_grow_linearly() -> None:
    module = CosFormerAttention()
    for causal in (False, True):
        small = module.flops(1, 1, 1024, 1024, 64, causal)
        large = module.flops(1, 1, 4096, 4096, 64, causal)
        assert 3.9 < large / small < 4.1, (causal, large / small)
