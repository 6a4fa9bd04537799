"""Nystromformer attention (Xiong et al. 2021).

"Nystromformer: A Nystrom-Based Algorithm for Approximating Self-Attention" approximates the
softmax attention matrix ``S = softmax(Q K^T * scale)`` by the Nystrom form
``softmax(Q Kl^T) pinv(softmax(Ql Kl^T)) softmax(Ql K^T)`` with ``m = num_landmarks`` landmark
queries ``Ql`` and keys ``Kl``, the means of ``m`` contiguous segments of the sequence. The
pseudo-inverse is the paper's iterative Moore-Penrose scheme (``pinv_iterations`` steps, default
6). Cost ``O(n * m * d + m^3)`` time and ``O(n * m)`` memory. The paper's extra depthwise
convolution on V is a model component, not part of the approximation, and is left out.

Segments: when ``n`` is not a multiple of ``m`` the segments are unequal, boundaries at
``floor(i * n / m)`` (lengths differ by at most one), and each landmark is its segment's mean; no
padding enters the means. With ``m = n`` every landmark is one token and the form reduces to
``S pinv(S) S = S`` (exact up to the pseudo-inverse's convergence).

Cross-attention (``q_len != kv_len``): landmarks of q and of k are segment means of their own
sequences, so ``softmax(Ql Kl^T)`` stays square. The number of landmarks used in a call is
``min(num_landmarks, q_len, kv_len)``. Causal attention is not defined by the paper (landmarks
mix past and future tokens): unsupported, and so is decoding. Grouped heads are repeated to the
query heads.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from variants.base import AttentionVariant, VariantConfigError, check_positive_int, check_qkv
from variants.grouped import repeat_bytes


def segment_mean_matrix(n: int, m: int, dtype: torch.dtype, device) -> Tensor:
    """``(m, n)`` averaging matrix; row i averages tokens floor(i n/m) .. floor((i+1) n/m) - 1."""
    bounds = torch.arange(m + 1, device=device) * n // m  # (m + 1,)
    pos = torch.arange(n, device=device)
    inside = (pos >= bounds[:-1, None]) & (pos < bounds[1:, None])  # (m, n)
    lengths = (bounds[1:] - bounds[:-1]).to(dtype)
    return inside.to(dtype) / lengths[:, None]


def iterative_pinv(mat: Tensor, iterations: int) -> Tensor:
    """Moore-Penrose pseudo-inverse of ``mat (..., m, m)`` by the iteration of Xiong et al.

    ``Z_0 = A^T / (||A||_1 ||A||_inf)``, ``Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4``;
    the norms are taken per matrix.
    """
    eye = torch.eye(mat.shape[-1], dtype=mat.dtype, device=mat.device)
    col = mat.abs().sum(dim=-2).amax(dim=-1)  # (...,) max column sum
    row = mat.abs().sum(dim=-1).amax(dim=-1)  # (...,) max row sum
    z = mat.transpose(-2, -1) / (col * row)[..., None, None]
    for _ in range(iterations):
        az = mat @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


class NystromAttention(AttentionVariant):
    """Nystrom approximation of softmax attention with segment-mean landmarks.

    Args:
        num_landmarks: Number of landmarks ``m`` (1 <= m <= kv_len). Default 64.
        pinv_iterations: Steps of the iterative pseudo-inverse (>= 1). Default 6.
        kv_len: Key length the variant is built for (bounds num_landmarks).
        head_dim: Ignored.
        scale: Softmax scale; default ``1/sqrt(head_dim)``.
    """

    name: ClassVar[str] = "nystrom"
    exact: ClassVar[bool] = False
    supports_causal: ClassVar[bool] = False
    supports_cross: ClassVar[bool] = True
    knob: ClassVar[str | None] = "num_landmarks"
    no_decode_reason: ClassVar[str] = (
        "no decode form: the landmarks are means of segments of the whole sequence, so a new "
        "token moves the segment boundaries and changes every landmark"
    )

    def __init__(
        self,
        num_landmarks: int = 64,
        pinv_iterations: int = 6,
        kv_len: int | None = None,
        head_dim: int | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim, scale=scale)
        self.num_landmarks = check_positive_int(self.name, "num_landmarks", num_landmarks)
        if kv_len is not None and num_landmarks > kv_len:
            raise VariantConfigError(
                f"nystrom: num_landmarks={num_landmarks} exceeds kv_len={kv_len} "
                f"(allowed: 1..{kv_len})"
            )
        self.pinv_iterations = check_positive_int(self.name, "pinv_iterations", pinv_iterations)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        check_qkv(q, k, v)
        if causal:
            raise ValueError("nystrom: causal attention is not supported by this variant")
        nq, nk = q.shape[-2], k.shape[-2]
        m = min(self.num_landmarks, nq, nk)
        scale = self.softmax_scale(q.shape[-1])
        q_land = segment_mean_matrix(nq, m, q.dtype, q.device) @ q  # (B, H, m, D)
        k_land = segment_mean_matrix(nk, m, k.dtype, k.device) @ k  # (B, H, m, D)
        kernel_1 = torch.softmax(q @ k_land.transpose(-2, -1) * scale, dim=-1)  # (B, H, Nq, m)
        kernel_2 = torch.softmax(q_land @ k_land.transpose(-2, -1) * scale, dim=-1)  # (B,H,m,m)
        kernel_3 = torch.softmax(q_land @ k.transpose(-2, -1) * scale, dim=-1)  # (B, H, m, Nk)
        # right to left: m^2 * Dv for the middle product instead of Nq * m^2
        landmark_values = kernel_3 @ v  # (B, H, m, Dv)
        mixed = iterative_pinv(kernel_2, self.pinv_iterations) @ landmark_values  # (B,H,m,Dv)
        return kernel_1 @ mixed  # (B, H, Nq, Dv)

    def _landmark_flops(self, q_len: int, kv_len: int, head_dim: int) -> int:
        """Per-head FLOPs of the two segment means (fixed averaging matrices times q and k)."""
        return 2 * min(self.num_landmarks, q_len, kv_len) * (q_len + kv_len) * head_dim

    def flops(
        self,
        batch: int,
        heads: int,
        q_len: int,
        kv_len: int,
        head_dim: int,
        causal: bool,
        kv_heads: int | None = None,
    ) -> int:
        m = min(self.num_landmarks, q_len, kv_len)
        d = head_dim
        kernels = 2 * q_len * m * d + 2 * m * m * d + 2 * m * kv_len * d
        pinv = self.pinv_iterations * 4 * 2 * m**3
        products = 2 * m * kv_len * d + 2 * m * m * d + 2 * q_len * m * d
        landmarks = self._landmark_flops(q_len, kv_len, d)
        return batch * heads * (landmarks + kernels + pinv + products)

    def backward_flops(
        self,
        batch: int,
        heads: int,
        q_len: int,
        kv_len: int,
        head_dim: int,
        causal: bool,
        kv_heads: int | None = None,
    ) -> int:
        # Every matmul's gradient is two matmuls of its size, except the segment means: the
        # averaging matrix needs no gradient, so only d(q) and d(k) are computed (1x).
        fwd = self.flops(batch, heads, q_len, kv_len, head_dim, causal)
        return 2 * fwd - batch * heads * self._landmark_flops(q_len, kv_len, head_dim)

    def analytic_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4, kv_heads=None
    ) -> int:
        m = min(self.num_landmarks, q_len, kv_len)
        per_head = 2 * (q_len + kv_len) * m + 6 * m * m + q_len * head_dim
        repeated = repeat_bytes(batch, heads, kv_heads, kv_len, head_dim, element_size)
        return batch * heads * per_head * element_size + repeated
