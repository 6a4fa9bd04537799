"""FAVOR+ feature maps of Performer (Choromanski et al. 2020), used by :mod:`variants.performer`.

Positive random features ``phi(x) = exp(W x - |x|^2 / 2) / sqrt(m)`` estimate the softmax kernel
``exp(q . k)`` without bias for Gaussian rows ``w ~ N(0, I)``
(:func:`softmax_kernel_features`); the rows are drawn in orthogonal blocks with chi norms
(:func:`orthogonal_gaussian_projection`), which lowers the variance. ``relu`` features are the
paper's generalised attention (:func:`relu_kernel_features`). The forward's own forms
(:func:`query_features`, :func:`key_logits`, :class:`ShiftedExp`) equal these up to factors
that cancel in the normalised attention (docs/performance.md).

``eps`` (``performer-pytorch``'s choice, transcribed from google-research's JAX code, default
1e-4 there) adds a constant after the max shift: ``phi(x) = (exp(W x - |x|^2 / 2 - c) + eps) /
sqrt(m)`` with ``c`` the max of ``W x``. Because the shift makes the largest feature about
``exp(-|x|^2 / 2)``, a fixed ``eps`` pulls every weight toward uniform attention: on diffuse
inputs the error falls (n=512, d=64, 256 features, unit Gaussian q, k, v: rel_err about 0.8
against 3.4 unbiased), and the output tends to the mean of V (d=16, n=256: 0.90 against 0.87
for uniform attention). With ``eps > 0`` the key shift no longer cancels, so it would carry
future keys into causal outputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from variants.engines.prefix import FeatureMaps

RELU_EPS = 1e-3


def orthogonal_gaussian_projection(
    nb_features: int, head_dim: int, generator: torch.Generator
) -> Tensor:
    """``(nb_features, head_dim)`` rows: orthogonal within blocks of ``head_dim``, chi norms.

    Each block is the Q factor of a Gaussian matrix with the signs fixed by ``diag(R)`` (so it
    is Haar-distributed); every row is then scaled by the norm of an independent Gaussian
    vector, which makes each row marginally ``N(0, I)`` (needed for an unbiased estimate).
    """
    n_blocks = -(-nb_features // head_dim)
    gauss = torch.randn(n_blocks, head_dim, head_dim, generator=generator, dtype=torch.float64)
    q_fac, r_fac = torch.linalg.qr(gauss)  # (blocks, d, d)
    q_fac = q_fac * torch.sign(torch.diagonal(r_fac, dim1=-2, dim2=-1)).unsqueeze(-2)
    rows = q_fac.transpose(-2, -1).reshape(n_blocks * head_dim, head_dim)[:nb_features]
    norms = torch.randn(nb_features, head_dim, generator=generator, dtype=torch.float64)
    return (rows * norms.norm(dim=-1, keepdim=True)).float()  # (m, d)


def softmax_kernel_features(
    x: Tensor, projection: Tensor, stabilize: str | None = None, eps: float = 0.0
) -> Tensor:
    """Positive random features ``(exp(W x - |x|^2 / 2 - c) + eps) / sqrt(m)`` of ``x``.

    ``E[phi(q) . phi(k)] = exp(q . k)`` when ``c = 0`` (``stabilize=None``) and ``eps = 0``.
    ``stabilize="row"`` subtracts each row's max (queries), ``"global"`` the max over the last
    two dims (keys); the shift is treated as a constant (detached) because the attention ratio
    does not depend on it when ``eps = 0``. The max is taken of ``W x - |x|^2 / 2`` when
    ``eps = 0`` and of ``W x`` otherwise, as ``performer-pytorch`` does (module docstring).

    Args:
        x: ``(..., N, d)`` inputs, already multiplied by ``sqrt(scale)``.
        projection: ``(m, d)`` random rows.
        stabilize: None, "row" or "global".
        eps: Constant added to every feature after the shift (0: unbiased).

    Returns:
        ``(..., N, m)`` features.
    """
    m = projection.shape[0]
    w = projection.to(x.dtype)
    # One GEMM gives W x - |x|^2 / 2: x gets an extra column |x|^2 and W^T an extra row -1/2.
    x_aug = torch.cat([x, x.pow(2).sum(dim=-1, keepdim=True)], dim=-1)  # (..., N, d + 1)
    w_aug = torch.cat([w, w.new_full((m, 1), -0.5)], dim=-1).transpose(0, 1)  # (d + 1, m)
    logits = x_aug @ w_aug  # (..., N, m)
    shift = logits.new_zeros(())
    if stabilize is not None:
        shift = logits.detach().amax(dim=-1, keepdim=True)  # (..., N, 1)
        if eps:  # max of W x = max of the logits + |x|^2 / 2 (constant along the row)
            shift = shift + 0.5 * x_aug[..., -1:].detach()
        if stabilize == "global":
            shift = shift.amax(dim=-2, keepdim=True)  # (..., 1, 1)
    # exp(l - c) / sqrt(m) == exp(l - c - ln(m) / 2); in place: two passes over (N, m), no copies
    # (the matmul's backward does not need its output, exp_'s needs only its own result).
    features = logits.sub_(shift + 0.5 * math.log(m)).exp_()
    return features + eps / math.sqrt(m) if eps else features


def relu_kernel_features(x: Tensor, projection: Tensor) -> Tensor:
    """Generalised-attention features ``relu(W x) / sqrt(m) + 1e-3`` of ``x (..., N, d)``."""
    proj = _project(x, projection.transpose(0, 1).to(x.dtype))  # (..., N, m)
    return torch.relu(proj) * (projection.shape[0] ** -0.5) + RELU_EPS


def _project(x: Tensor, w: Tensor, out: Tensor | None = None) -> Tensor:
    """``x (..., N, d) @ w (d, m)`` as one GEMM (not a batched one for a strided ``x``)."""
    flat, m = x.reshape(-1, x.shape[-1]), w.shape[-1]
    return torch.mm(flat, w, out=None if out is None else out.view(-1, m)).view(*x.shape[:-1], m)


def query_features(q: Tensor, w: Tensor, out: Tensor | None = None) -> Tensor:
    """``softmax(q W^T)`` of ``(..., N, d)`` queries, ``w = W^T sqrt(scale)`` ``(d, m)``; without
    a graph in place, in ``out`` when given (a spent buffer: a fresh ``(N, m)`` tensor costs its
    page faults, more than the softmax itself)."""
    tracked = torch.is_grad_enabled() and (q.requires_grad or w.requires_grad)
    if tracked or q.device.type != "cpu":  # (CUDA's caching allocator has no such cost)
        return torch.softmax(_project(q, w), dim=-1)
    logits = _project(q, w, out)  # (..., N, m)
    return torch.ops.aten._softmax.out(logits, -1, False, out=logits)


def key_logits(k: Tensor, w: Tensor, scale: float) -> Tensor:
    """``W k - scale |k|^2 / 2`` of ``(..., N, d)`` keys: the causal key features' logits."""
    bias = torch.linalg.vecdot(k, k).mul_(-0.5 * scale)[..., None]  # (..., N, 1)
    # added in place, not as addmm's broadcast input: that costs a copy pass over (N, m)
    return _project(k, w).add_(bias)


RELU_MAPS = FeatureMaps(query=relu_kernel_features, key=relu_kernel_features)


class ShiftedExp(torch.autograd.Function):
    """``exp(logits - bias)`` in place over ``logits`` (the GEMM's backward needs no output).

    Autograd of ``sub_`` and ``exp_`` would, in the backward, negate the whole ``(N, m)``
    gradient before summing it down to ``bias``'s ``(N, 1)``: two more ``(N, m)`` tensors.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, bias: Tensor) -> Tensor:
        ctx.mark_dirty(logits)
        out = logits.sub_(bias).exp_()
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        (out,) = ctx.saved_tensors
        grad_logits = out * grad  # out first: the product takes its (contiguous) layout
        return grad_logits, -grad_logits.sum(dim=-1, keepdim=True)
