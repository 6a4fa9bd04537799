"""Performer attention with FAVOR+ random features (Choromanski et al. 2020).

"Rethinking Attention with Performers" approximates the softmax kernel
``exp(q . k * scale)`` by ``phi(q) . phi(k)`` with positive random features
``phi(x) = exp(W x - |x|^2 / 2) / sqrt(m)`` (``x`` scaled by ``sqrt(scale)``), an unbiased
estimate for Gaussian rows ``w ~ N(0, I)``. The ``m = nb_features`` rows are drawn in orthogonal
blocks of ``head_dim`` rows (several blocks stacked when ``m > head_dim``), each row rescaled by
an independent chi(head_dim) norm so that it is marginally Gaussian, which lowers the variance.
Attention is then ``phi(Q) (phi(K)^T V) / phi(Q) phi(K)^T 1``: ``O(n * m * d)`` time and
``O(n * m)`` memory; causal attention uses chunked prefix sums (:mod:`variants._prefix`) and never
forms an ``(n, m, d)`` tensor.

Numerical stabilisation: before ``exp``, queries subtract the max of their own row of
projections and keys subtract one max over all keys and features of a head. Both constants
cancel between numerator and denominator, so the ratio is unchanged.

``kernel="relu"`` is the paper's generalised-attention variant ``phi(x) = relu(W x) / sqrt(m)``
plus a small constant (1e-3) that keeps the denominator positive; it does not estimate softmax.

Causal cross-attention (``q_len < kv_len``) is supported with the suite's bottom-right alignment.

Parameters (with defaults): ``nb_features=256`` (the accuracy knob), ``redraw="fixed"`` (one draw
from ``seed``) or ``"every_call"`` (new features on every forward, from a generator seeded by
``seed`` and advanced per call), ``kernel="softmax"``, ``chunk_size=128`` (causal only).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from variants._prefix import causal_linear_attention, causal_linear_flops
from variants.base import (
    AttentionVariant,
    check_choice,
    check_int,
    check_positive_int,
    check_qkv,
)

REDRAWS = ("fixed", "every_call")
KERNELS = ("softmax", "relu")
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


def softmax_kernel_features(x: Tensor, projection: Tensor, stabilize: str | None = None) -> Tensor:
    """Positive random features ``exp(W x - |x|^2 / 2 - c) / sqrt(m)`` of ``x (..., N, d)``.

    ``E[phi(q) . phi(k)] = exp(q . k)`` when ``c = 0`` (``stabilize=None``). ``stabilize="row"``
    subtracts each row's max (queries), ``"global"`` the max over the last two dims (keys); the
    shift is treated as a constant (detached) because the attention ratio does not depend on it.

    Args:
        x: ``(..., N, d)`` inputs, already multiplied by ``sqrt(scale)``.
        projection: ``(m, d)`` random rows.
        stabilize: None, "row" or "global".

    Returns:
        ``(..., N, m)`` features.
    """
    m = projection.shape[0]
    w = projection.to(x.dtype)
    # One GEMM gives W x - |x|^2 / 2: x gets an extra column |x|^2 and W^T an extra row -1/2.
    x_aug = torch.cat([x, x.pow(2).sum(dim=-1, keepdim=True)], dim=-1)  # (..., N, d + 1)
    w_aug = torch.cat([w, w.new_full((m, 1), -0.5)], dim=-1).transpose(0, 1)  # (d + 1, m)
    logits = x_aug @ w_aug  # (..., N, m)
    if stabilize == "row":
        shift = logits.detach().amax(dim=-1, keepdim=True)
    elif stabilize == "global":
        shift = logits.detach().amax(dim=(-2, -1), keepdim=True)
    else:
        shift = logits.new_zeros(())
    # exp(l - c) / sqrt(m) == exp(l - c - ln(m) / 2); in place: two passes over (N, m), no copies
    # (the matmul's backward does not need its output, exp_'s needs only its own result).
    return logits.sub_(shift + 0.5 * math.log(m)).exp_()


def relu_kernel_features(x: Tensor, projection: Tensor) -> Tensor:
    """Generalised-attention features ``relu(W x) / sqrt(m) + 1e-3`` of ``x (..., N, d)``."""
    proj = x @ projection.transpose(0, 1).to(x.dtype)  # (..., N, m)
    return torch.relu(proj) * (projection.shape[0] ** -0.5) + RELU_EPS


class PerformerAttention(AttentionVariant):
    """FAVOR+ attention: positive orthogonal random features for the softmax kernel.

    Args:
        nb_features: Number of random features ``m`` (>= 1; may exceed head_dim). Default 256.
        redraw: "fixed" (drawn once from ``seed``) or "every_call" (new draw per forward).
        kernel: "softmax" (FAVOR+, unbiased for exp) or "relu" (generalised attention).
        chunk_size: Tokens per chunk of the causal prefix sum. Default 128.
        seed: Seed of the random features.
        kv_len: Ignored (accepted for a uniform constructor).
        head_dim: Head dimension; with "fixed" the features are drawn here (else on first call).
        scale: Softmax scale; default ``1/sqrt(head_dim)``.
    """

    name: ClassVar[str] = "performer"
    exact: ClassVar[bool] = False
    supports_causal: ClassVar[bool] = True
    supports_cross: ClassVar[bool] = True
    randomized: ClassVar[bool] = True
    knob: ClassVar[str | None] = "nb_features"

    def __init__(
        self,
        nb_features: int = 256,
        redraw: str = "fixed",
        kernel: str = "softmax",
        chunk_size: int = 128,
        seed: int = 0,
        kv_len: int | None = None,
        head_dim: int | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim, scale=scale)
        self.nb_features = check_positive_int(self.name, "nb_features", nb_features)
        self.redraw = check_choice(self.name, "redraw", redraw, REDRAWS)
        self.kernel = check_choice(self.name, "kernel", kernel, KERNELS)
        self.chunk_size = check_positive_int(self.name, "chunk_size", chunk_size)
        self.seed = check_int(self.name, "seed", seed)
        self._generator = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", None)
        if redraw == "fixed" and head_dim is not None:
            self.projection = orthogonal_gaussian_projection(
                nb_features, head_dim, self._generator
            )

    def _projection(self, head_dim: int, like: Tensor) -> Tensor:
        """The ``(m, head_dim)`` rows for this call (drawn now for every_call or lazily)."""
        if self.redraw == "every_call":
            proj = orthogonal_gaussian_projection(self.nb_features, head_dim, self._generator)
            return proj.to(device=like.device)
        if self.projection is None or self.projection.shape[-1] != head_dim:
            if self.projection is not None:
                raise ValueError(
                    f"performer: built for head_dim={self.projection.shape[-1]}, got {head_dim}"
                )
            self.projection = orthogonal_gaussian_projection(
                self.nb_features, head_dim, self._generator
            )
        return self.projection.to(device=like.device)

    def features(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Stabilised query and key features ``(B, H, Nq, m)``, ``(B, H, Nk, m)``."""
        proj = self._projection(q.shape[-1], q)
        if self.kernel == "relu":
            return relu_kernel_features(q, proj), relu_kernel_features(k, proj)
        root_scale = math.sqrt(self.softmax_scale(q.shape[-1]))
        phi_q = softmax_kernel_features(q * root_scale, proj, stabilize="row")
        phi_k = softmax_kernel_features(k * root_scale, proj, stabilize="global")
        return phi_q, phi_k

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        check_qkv(q, k, v)
        phi_q, phi_k = self.features(q, k)  # (B, H, Nq, m), (B, H, Nk, m)
        tiny = torch.finfo(q.dtype).tiny
        if causal:
            ones = torch.ones_like(v[..., :1])  # (B, H, Nk, 1): last column -> denominator
            out = causal_linear_attention(phi_q, phi_k, torch.cat([v, ones], -1), self.chunk_size)
            return out[..., :-1] / out[..., -1:].clamp_min(tiny)  # (B, H, Nq, Dv)
        # The denominator rides along as an extra column of ones in V: one pass over phi_q.
        v_ones = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # (B, H, Nk, Dv + 1)
        kv = phi_k.transpose(-2, -1) @ v_ones  # (B, H, m, Dv + 1)
        out = phi_q @ kv  # (B, H, Nq, Dv + 1)
        return out[..., :-1] / out[..., -1:].clamp_min(tiny)  # (B, H, Nq, Dv)

    def flops(
        self, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool
    ) -> int:
        m, d = self.nb_features, head_dim
        feats = 2 * (q_len + kv_len) * m * d
        if causal:
            attend = causal_linear_flops(q_len, kv_len, m, d + 1, self.chunk_size)
        else:
            attend = 2 * kv_len * m * (d + 1) + 2 * q_len * m * (d + 1)
        return batch * heads * (feats + attend)

    def analytic_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4
    ) -> int:
        m, d = self.nb_features, head_dim
        per_head = 2 * (q_len + kv_len) * m + q_len * d  # projections/features, output
        if causal:
            c = min(self.chunk_size, q_len)
            per_head += kv_len * (d + 1) + q_len * c + (q_len // c + 1) * m * (d + 1)
        return batch * heads * per_head * element_size
