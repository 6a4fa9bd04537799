"""CUDA paths: every built-in variant on the GPU against its own CPU run and the float64 reference,
and CUDA rows carrying the GPU's driver, clocks, bf16 matmul rate and L2-flush flag.

The ``cuda`` tests are skipped without a CUDA device (tests/conftest.py) and are what
``scripts/gpu_run.sh`` runs first on a GPU machine. The nvidia-smi parsing is tested on the CPU.
"""

from __future__ import annotations

import copy
import os
import stat

import pytest
import torch

import variants
from harness.app.point import Point
from harness.conformance import build, make_qkv
from harness.measure import env
from harness.measure.config import MeasureConfig
from harness.measure.factory import make_factory
from harness.measure.reference import reference_attention, reference_grads
from harness.tasks.attention.measure import measure

SHAPE = (1, 4, 256, 256, 64)  # (batch, heads, q_len, kv_len, head_dim)
#: Relative error of a CUDA run against the same variant on the CPU in fp32 (or the float64
#: reference for the CUDA-only exact kernels): fp32 differs by summation order only; bf16 carries
#: 8 mantissa bits, so about 2^-8 per element, less after averaging.
TOL = {"float32": 1e-4, "bfloat16": 3e-2}
GRAD_TOL = {"float32": 1e-3, "bfloat16": 6e-2}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


#: Variants whose CUDA path is FlexAttention (backend ``auto``), compiled per shape, dtype and
#: masking (2-4 s each on an H100).
FLEX_ON_CUDA = ("local", "longformer")


def _names() -> list[str]:
    # last, so slow compiles cannot keep the other variants' CUDA paths from being tested inside
    # the run's time limit
    return sorted(variants.builtin_names(), key=lambda name: (name in FLEX_ON_CUDA, name))


@pytest.mark.cuda
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", _names())
def test_variant_on_cuda_matches_cpu(name: str, dtype: str, causal: bool) -> None:
    cpu = build(name, SHAPE[3], SHAPE[4], seed=0)
    gpu = copy.deepcopy(cpu).to("cuda")
    q, k, v = make_qkv(SHAPE, seed=0)
    qc, kc, vc = (t.to("cuda", getattr(torch, dtype)).requires_grad_(True) for t in (q, k, v))
    reasons = gpu.not_supported_reasons(qc, kc, vc, causal)
    if reasons:
        pytest.skip("; ".join(reasons))
    out = gpu(qc, kc, vc, causal=causal)
    assert out.device.type == "cuda" and out.dtype == qc.dtype
    assert torch.isfinite(out).all()
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    grads = torch.autograd.grad(out, (qc, kc, vc), grad_out) if gpu.supports_backward else None
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    if cpu.not_supported_reasons(*leaves, causal):  # a CUDA-only kernel: exact, so the reference
        assert gpu.exact, f"{name} runs on CUDA only but is not exact: no CPU run to compare"
        want = reference_attention(q, k, v, causal)
        want_grads = reference_grads(q, k, v, grad_out.cpu(), causal)
    else:
        want = cpu(*leaves, causal=causal)
        want_grads = torch.autograd.grad(want, leaves, grad_out.float().cpu())
    assert _rel(out, want) < TOL[dtype], f"{name} {dtype} causal={causal}: output"
    if grads is not None:
        for label, got, ref in zip("qkv", grads, want_grads, strict=True):
            assert torch.isfinite(got).all(), f"d{label} is not finite"
            assert _rel(got, ref) < GRAD_TOL[dtype], f"{name} {dtype} causal={causal}: d{label}"
    if gpu.exact:  # exact kernels also against float64, whatever the CPU run says
        assert _rel(out, reference_attention(q, k, v, causal)) < TOL[dtype]


@pytest.mark.cuda
def test_cuda_rows_carry_the_gpu_facts() -> None:
    point = Point(
        variant_cls=variants.get_class("sdpa"), task="attention", variant="sdpa", params={},
        batch=1, heads=4, q_len=1024, kv_len=1024, head_dim=64, dtype="bfloat16", device="cuda",
        causal=False, inputs="gaussian", inputs_params={}, seed=0, seeds=[0],
        passes=["fwd", "fwd_bwd"],
        measure=MeasureConfig(min_run_time=0.02, attn_matrix_max_n=1024, flush_l2=True),
    )  # fmt: skip
    rows = measure(point, make_factory(variants.get_class("sdpa"), {}, 1024, 64))
    for row in rows:
        assert row["status"] == "ok", row["reason"]
        assert row["l2_flushed"] is True and row["device_name"] == torch.cuda.get_device_name()
        assert row["matmul_tflops_bf16"] > 1 and row["matmul_tflops"] > 1
        assert row["gpu_driver"] and row["gpu_max_sm_clock_mhz"] > 0
        assert row["rel_err"] < TOL["bfloat16"] and row["tflops"] > 0
        assert row["peak_mem_bytes"] > 0


def test_gpu_facts_read_nvidia_smi(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '580.65.06, 1755, 1980, 2619'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    got = env.gpu_facts("cuda:0")
    assert got == {
        "gpu_driver": "580.65.06",
        "gpu_sm_clock_mhz": 1755.0,
        "gpu_max_sm_clock_mhz": 1980.0,
        "gpu_mem_clock_mhz": 2619.0,
    }


def test_gpu_facts_are_empty_on_the_cpu_or_without_nvidia_smi(tmp_path, monkeypatch) -> None:
    assert set(env.gpu_facts("cpu").values()) == {None}
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    assert set(env.gpu_facts("cuda:0").values()) == {None}
    assert env.matmul_tflops_bf16("cpu") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_point_without_cuda_is_unsupported_before_any_work() -> None:
    def factory(seed):  # never called: the device is refused first
        raise AssertionError("the variant was built")

    point = Point(
        variant_cls=variants.get_class("sdpa"), task="attention", variant="sdpa", params={},
        batch=1, heads=2, q_len=64, kv_len=64, head_dim=16, dtype="float32", device="cuda",
        causal=False, inputs="gaussian", inputs_params={}, seed=0, seeds=[0],
        passes=["fwd", "fwd_bwd"], measure=MeasureConfig(),
    )  # fmt: skip
    rows = measure(point, factory)
    assert [row["status"] for row in rows] == ["unsupported", "unsupported"]
    assert all(row["reason"].startswith("device=cuda: torch ") for row in rows)
    assert "device=cpu or device=auto" in rows[0]["reason"]
