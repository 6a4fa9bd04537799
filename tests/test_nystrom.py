"""Nystromformer: exact limit with num_landmarks = kv_len, segments, pseudo-inverse, errors."""

import pytest
import torch

import variants
from harness.conformance import make_qkv
from harness.measure.reference import reference_attention
from variants.base import VariantConfigError
from variants.nystrom import iterative_pinv, segment_mean_matrix

# Tiny shapes gain nothing from threads; on a shared box threads only wait on each other.
pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("n", [48, 67])
def test_landmarks_equal_kv_len_is_exact(n):
    # With m = n the form is S pinv(S) S = S; the paper's 6 pinv steps are not converged for
    # n x n softmax matrices (about 4% off here), so the limit is taken with 20 steps.
    q, k, v = make_qkv((2, 2, n, n, 16), seed=0, dtype=torch.float64)
    ref = reference_attention(q, k, v)
    module = variants.create("nystrom", kv_len=n, num_landmarks=n, pinv_iterations=20)
    assert rel_err(module(q, k, v), ref) < 1e-4
    assert rel_err(module(q.float(), k.float(), v.float()), ref) < 1e-4


def test_more_pinv_iterations_converge():
    q, k, v = make_qkv((1, 2, 40, 40, 16), seed=1, dtype=torch.float64)
    ref = reference_attention(q, k, v)
    errs = [
        rel_err(
            variants.create("nystrom", kv_len=40, num_landmarks=40, pinv_iterations=it)(q, k, v),
            ref,
        )
        for it in (4, 8, 12, 20)
    ]
    assert errs == sorted(errs, reverse=True), errs


def test_iterative_pinv_matches_pinv():
    gen = torch.Generator().manual_seed(2)
    mat = torch.softmax(torch.randn(3, 12, 12, generator=gen, dtype=torch.float64), dim=-1)
    approx = iterative_pinv(mat, 30)
    assert torch.allclose(approx, torch.linalg.pinv(mat), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("n, m", [(10, 3), (67, 64), (64, 64), (7, 1), (100, 7)])
def test_segments_cover_every_token_once(n, m):
    avg = segment_mean_matrix(n, m, torch.float64, "cpu")  # (m, n)
    assert avg.shape == (m, n)
    assert torch.allclose(avg.sum(-1), torch.ones(m, dtype=torch.float64))
    members = avg > 0
    assert (members.sum(0) == 1).all(), "each token belongs to exactly one segment"
    lengths = members.sum(-1)
    assert lengths.max() - lengths.min() <= 1, "segments differ by at most one token"


def test_error_falls_with_more_landmarks():
    q, k, v = make_qkv((1, 2, 64, 64, 16), seed=3, dtype=torch.float64)
    ref = reference_attention(q, k, v)
    errs = [
        rel_err(
            variants.create("nystrom", kv_len=64, num_landmarks=m, pinv_iterations=20)(q, k, v),
            ref,
        )
        for m in (4, 64)
    ]
    assert errs[1] < errs[0]


def test_cross_attention_uses_common_landmark_count():
    q, k, v = make_qkv((1, 2, 20, 50, 8), seed=4)
    module = variants.create("nystrom", kv_len=50, num_landmarks=32)
    out = module(q, k, v)
    assert out.shape == (1, 2, 20, 8) and torch.isfinite(out).all()
    assert module.flops(1, 2, 20, 50, 8, False) > 0


def test_causal_unsupported_with_reason():
    q, k, v = make_qkv((1, 1, 8, 8, 4), seed=5)
    module = variants.create("nystrom", kv_len=8, num_landmarks=4)
    reasons = module.not_supported_reasons(q, k, v, True)
    assert reasons and "causal" in reasons[0]


def test_gradients_finite():
    q, k, v = make_qkv((1, 2, 33, 33, 8), seed=6, requires_grad=True)
    variants.create("nystrom", kv_len=33, num_landmarks=8)(q, k, v).square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()


@pytest.mark.parametrize(
    "params, match",
    [
        ({"num_landmarks": 0}, "nystrom: num_landmarks=0"),
        ({"num_landmarks": 600, "kv_len": 512}, "nystrom: num_landmarks=600 exceeds kv_len=512"),
        ({"pinv_iterations": 0}, "nystrom: pinv_iterations"),
    ],
)
def test_bad_params_name_field(params, match):
    with pytest.raises(VariantConfigError, match=match):
        variants.create("nystrom", **params)
