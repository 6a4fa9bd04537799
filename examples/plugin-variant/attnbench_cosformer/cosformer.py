"""cosFormer: linear attention with ReLU features and cos re-weighting (Qin et al., ICLR 2022).

"cosFormer: Rethinking Softmax in Attention" replaces ``exp(q.k)`` by a non-negative kernel that
also decays with distance::

    s(i, j) = relu(q_i) . relu(k_j) * cos(pi/2 * (p_i - p_j) / M)
    out_i   = sum_j s(i, j) v_j / sum_j s(i, j)

Since ``cos(a - b) = cos a cos b + sin a sin b``, the kernel factorises into features of size
``2D``: ``phi(x, p) = [relu(x) cos(pi p / 2M), relu(x) sin(pi p / 2M)]``, so the output is plain
linear attention over those features, O(N D^2) time and O(D^2) state instead of O(N^2).
It approximates softmax attention (it is not exact): ``exact = False``.

Positions follow the suite's bottom-right convention: key ``j`` sits at ``j`` and query ``i`` at
``i + (kv_len - q_len)`` (both shifted so that none is negative); ``M`` is ``max_len`` or, by
default, ``max(q_len, kv_len)`` as in the authors' code, so every weight is in ``(0, 1]``.

Causal attention uses chunked prefix sums with no Python loop over tokens: each chunk of
``chunk_size`` tokens attends to itself with a masked ``chunk x chunk`` product and to all
earlier chunks through an exclusive cumulative sum of per-chunk ``phi(k)^T v`` states.

The ratio is invariant to scaling q or k, so ``scale`` is accepted (uniform constructor) but has
no effect. fp16/bf16 inputs are computed in float32 (the running sums overflow or lose precision
in half precision) and the output is cast back.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from variants.base import AttentionVariant, VariantConfigError, check_positive_int


def _positions(q_len: int, kv_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Query and key positions (bottom-right aligned, shifted to start at 0)."""
    offset = kv_len - q_len
    shift = max(0, -offset)
    q_pos = torch.arange(q_len, device=device) + offset + shift
    k_pos = torch.arange(kv_len, device=device) + shift
    return q_pos, k_pos


def cos_features(x: Tensor, positions: Tensor, max_len: int) -> Tensor:
    """``[relu(x) cos(pi p / 2M), relu(x) sin(pi p / 2M)]``: ``(B, H, N, D) -> (B, H, N, 2D)``."""
    angle = positions.to(x.dtype) * (math.pi / (2 * max_len))  # (N,)
    x = torch.relu(x)
    return torch.cat([x * torch.cos(angle)[:, None], x * torch.sin(angle)[:, None]], dim=-1)


class CosFormerAttention(AttentionVariant):
    """cosFormer linear attention (bidirectional, causal and cross).

    Args:
        chunk_size: Tokens per chunk of the causal prefix sums (cost only, not accuracy).
            Default 64.
        max_len: ``M`` of the cos re-weighting; ``None`` uses ``max(q_len, kv_len)`` of the
            inputs. Inputs longer than ``max_len`` are reported unsupported. Default ``None``.
        eps: Floor of the normaliser ``sum_j s(i, j)`` (a query with all-negative entries has
            zero ReLU features and gets a zero output). Default ``1e-6``.
        kv_len: Ignored (accepted for a uniform constructor).
        head_dim: Ignored.
        scale: Accepted for a uniform constructor; has no effect (see the module docstring).
    """

    name: ClassVar[str] = "cosformer"
    exact: ClassVar[bool] = False
    supports_causal: ClassVar[bool] = True
    supports_cross: ClassVar[bool] = True
    randomized: ClassVar[bool] = False
    knob: ClassVar[str | None] = None  # no accuracy/cost trade-off: the kernel is fixed

    def __init__(
        self,
        chunk_size: int = 64,
        max_len: int | None = None,
        eps: float = 1e-6,
        kv_len: int | None = None,
        head_dim: int | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim, scale=scale)
        self.chunk_size = check_positive_int(self.name, "chunk_size", chunk_size)
        self.max_len = (
            None if max_len is None else check_positive_int(self.name, "max_len", max_len)
        )
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise VariantConfigError(f"{self.name}: eps={eps!r} must be a number in (0, 1)")
        self.eps = float(eps)

    def not_supported_reasons(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, causal)
        longest = max(q.shape[-2], k.shape[-2])
        if self.max_len is not None and longest > self.max_len:
            reasons.append(
                f"{self.name}: length {longest} exceeds max_len={self.max_len} (the cos weights "
                "would turn negative); set max_len >= max(q_len, kv_len) or leave it None"
            )
        return reasons

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        out_dtype = q.dtype
        if q.dtype in (torch.float16, torch.bfloat16):
            q, k, v = q.float(), k.float(), v.float()
        q_len, kv_len = q.shape[-2], k.shape[-2]
        max_len = self.max_len or max(q_len, kv_len)
        q_pos, k_pos = _positions(q_len, kv_len, q.device)
        qf = cos_features(q, q_pos, max_len)  # (B, H, Nq, 2D)
        kf = cos_features(k, k_pos, max_len)  # (B, H, Nk, 2D)
        if causal:
            out = self._causal(qf, kf, v)
        else:
            kv = torch.matmul(kf.transpose(-2, -1), v)  # (B, H, 2D, Dv)
            k_sum = kf.sum(dim=-2).unsqueeze(-1)  # (B, H, 2D, 1)
            out = torch.matmul(qf, kv) / torch.matmul(qf, k_sum).clamp_min(self.eps)
        return out.to(out_dtype)  # (B, H, Nq, Dv)

    def _causal(self, qf: Tensor, kf: Tensor, v: Tensor) -> Tensor:
        """Causal linear attention by chunked prefix sums; requires q_len <= kv_len."""
        b, h, q_len, feat = qf.shape
        kv_len, dv = kf.shape[-2], v.shape[-1]
        # Queries take the last q_len key positions: zero features in front line them up.
        qf = F.pad(qf, (0, 0, kv_len - q_len, 0))  # (B, H, Nk, 2D)
        chunk = min(self.chunk_size, kv_len)
        n_chunks = -(-kv_len // chunk)
        pad = n_chunks * chunk - kv_len  # zero tail: contributes nothing, cut off below
        qc = F.pad(qf, (0, 0, 0, pad)).reshape(b, h, n_chunks, chunk, feat)
        kc = F.pad(kf, (0, 0, 0, pad)).reshape(b, h, n_chunks, chunk, feat)
        vc = F.pad(v, (0, 0, 0, pad)).reshape(b, h, n_chunks, chunk, dv)

        # Earlier chunks: exclusive prefix sums of the per-chunk states.
        chunk_kv = torch.matmul(kc.transpose(-2, -1), vc)  # (B, H, C, 2D, Dv)
        chunk_ksum = kc.sum(dim=-2)  # (B, H, C, 2D)
        prev_kv = torch.cumsum(
            torch.cat([torch.zeros_like(chunk_kv[:, :, :1]), chunk_kv[:, :, :-1]], dim=2), dim=2
        )
        prev_ksum = torch.cumsum(
            torch.cat([torch.zeros_like(chunk_ksum[:, :, :1]), chunk_ksum[:, :, :-1]], dim=2),
            dim=2,
        )
        num = torch.matmul(qc, prev_kv)  # (B, H, C, chunk, Dv)
        den = torch.matmul(qc, prev_ksum.unsqueeze(-1))  # (B, H, C, chunk, 1)

        # Within a chunk: the masked chunk x chunk kernel matrix.
        tril = torch.ones(chunk, chunk, dtype=torch.bool, device=qf.device).tril()
        scores = torch.matmul(qc, kc.transpose(-2, -1)).masked_fill(~tril, 0.0)
        num = num + torch.matmul(scores, vc)  # (B, H, C, chunk, Dv)
        den = den + scores.sum(dim=-1, keepdim=True)

        out = (num / den.clamp_min(self.eps)).reshape(b, h, n_chunks * chunk, dv)
        return out[:, :, kv_len - q_len : kv_len]  # (B, H, Nq, Dv)

    def flops(
        self, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool
    ) -> int:
        # Matmuls and reductions over features of size 2D (v has head_dim columns too).
        feat, d = 2 * head_dim, head_dim
        if not causal:
            per_head = 2 * feat * d * (q_len + kv_len) + feat * kv_len + 2 * feat * q_len
        else:
            chunk = min(self.chunk_size, kv_len)
            n_chunks = -(-kv_len // chunk)
            padded = n_chunks * chunk
            per_head = (
                4 * padded * feat * d  # chunk states and the inter-chunk product
                + padded * feat
                + 2 * padded * feat  # key sums and inter-chunk normaliser
                + n_chunks * feat * (d + 1)  # prefix sums
                + 2 * padded * chunk * (feat + d)
                + padded * chunk  # intra-chunk products
            )
        return int(batch * heads * per_head)

    def analytic_mem_bytes(
        self,
        batch: int,
        heads: int,
        q_len: int,
        kv_len: int,
        head_dim: int,
        causal: bool,
        element_size: int = 4,
    ) -> int:
        feat, d = 2 * head_dim, head_dim
        if not causal:
            # features of q and k, the (2D, Dv) state, numerator and output
            elems = (q_len + kv_len) * feat + feat * d + 2 * q_len * d
        else:
            chunk = min(self.chunk_size, kv_len)
            n_chunks = -(-kv_len // chunk)
            padded = n_chunks * chunk
            # padded features, per-chunk and prefix states, intra scores, two numerators, out
            elems = (
                2 * padded * feat
                + 2 * n_chunks * feat * d
                + padded * chunk
                + 2 * padded * d
                + q_len * d
            )
        return int(batch * heads * elems * element_size)
