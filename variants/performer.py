"""Performer attention with FAVOR+ random features (Choromanski et al. 2020).

"Rethinking Attention with Performers" approximates the softmax kernel ``exp(q . k * scale)`` by
``phi(q) . phi(k)`` with ``m = nb_features`` positive orthogonal random features
(:mod:`variants.performer_features`); attention is then ``phi(Q) (phi(K)^T V) / phi(Q) phi(K)^T
1``: ``O(n * m * d)`` time and ``O(n * m)`` memory. Causal attention streams chunked prefix sums
(:mod:`variants.engines.prefix`) that make the features group by group. Before ``exp`` queries
subtract the max of their own row and keys one max per head (causal: the running max); these
cancel in the ratio. ``kernel="relu"`` is the paper's generalised attention ``relu(W x) /
sqrt(m)`` plus 1e-3; it does not estimate softmax. Causal cross-attention is bottom-right
aligned. Decoding carries the ``(m, Dv + 1)`` running sum and the running key max
(:mod:`variants.engines.prefix_decode`). Grouped heads are native: one key summary (and decode
state) per KV head; the causal forward repeats k and v to the query heads.

Parameters, their defaults and meaning: :class:`PerformerAttention` (``nb_features`` is the
accuracy knob; ``learnable_projection`` makes the rows trainable for attention transfer).
"""

from __future__ import annotations

import math
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor

from variants.base import (
    AttentionVariant,
    VariantConfigError,
    check_choice,
    check_int,
    check_positive_int,
    check_qkv,
)
from variants.engines.prefix import FeatureMaps, kernel_attention, with_ones_column
from variants.engines.prefix_costs import StreamedKernelAttention
from variants.engines.prefix_decode import RecurrentDecode
from variants.grouped import group_size, grouped_queries, repeat_bytes, repeat_kv, ungroup
from variants.performer_features import (
    RELU_MAPS,
    ShiftedExp,
    key_logits,
    orthogonal_gaussian_projection,
    query_features,
    relu_kernel_features,
    softmax_kernel_features,
)
from variants.tuning import check_auto

REDRAWS = ("fixed", "every_call")
KERNELS = ("softmax", "relu")


class PerformerAttention(RecurrentDecode, StreamedKernelAttention, AttentionVariant):
    """FAVOR+ attention: positive orthogonal random features for the softmax kernel.

    Args:
        nb_features: Number of random features ``m`` (>= 1; may exceed head_dim). Default 256.
        redraw: "fixed" (drawn once from ``seed``) or "every_call" (new draw per forward).
        kernel: "softmax" (FAVOR+, unbiased for exp) or "relu" (generalised attention).
        chunk_size: Tokens per chunk of the causal prefix sum; None (default) chooses it by
            measurement on this machine (:mod:`variants.tuning`; 32 with tuning off).
        seed: Seed of the random features.
        kv_len: Ignored (accepted for a uniform constructor).
        head_dim: Head dimension; with "fixed" the features are drawn here (else on first call).
        scale: Softmax scale; default ``1/sqrt(head_dim)``.
        eps: Constant added to the softmax-kernel features after the max shift (>= 0; default
            0, the unbiased estimator; performer-pytorch uses 1e-4). Bidirectional only: with
            ``eps > 0`` the key shift does not cancel (:mod:`variants.performer_features`).
        learnable_projection: Make the random rows a trainable ``nn.Parameter`` (initialised
            from the same draw). Needs ``head_dim`` and ``redraw="fixed"``. Default False.
        group_elements: Query elements per streamed group of chunks; None: tuned likewise.
    """

    name: ClassVar[str] = "performer"
    exact: ClassVar[bool] = False
    supports_causal: ClassVar[bool] = True
    supports_cross: ClassVar[bool] = True
    randomized: ClassVar[bool] = True
    knob: ClassVar[str | None] = "nb_features"
    gqa: ClassVar[str] = "native"
    default_chunk: ClassVar[int] = 32

    def __init__(
        self,
        nb_features: int = 256,
        redraw: str = "fixed",
        kernel: str = "softmax",
        chunk_size: int | None = None,
        seed: int = 0,
        kv_len: int | None = None,
        head_dim: int | None = None,
        scale: float | None = None,
        eps: float = 0.0,
        learnable_projection: bool = False,
        group_elements: int | None = None,
    ) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim, scale=scale)
        self.nb_features = check_positive_int(self.name, "nb_features", nb_features)
        self.redraw = check_choice(self.name, "redraw", redraw, REDRAWS)
        self.kernel = check_choice(self.name, "kernel", kernel, KERNELS)
        self.chunk_size = check_auto(self.name, "chunk_size", chunk_size)
        self.group_elements = check_auto(self.name, "group_elements", group_elements)
        self.seed = check_int(self.name, "seed", seed)
        ok = isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0 <= eps < math.inf
        if not ok:
            raise VariantConfigError(f"performer: eps={eps!r} must be a number >= 0")
        if eps and kernel != "softmax":
            raise VariantConfigError(
                f"performer: eps={eps} applies to kernel='softmax' only (relu adds its own 1e-3)"
            )
        self.eps = float(eps)
        if not isinstance(learnable_projection, bool):
            raise VariantConfigError(
                f"performer: learnable_projection={learnable_projection!r} must be true or false"
            )
        if learnable_projection and (head_dim is None or redraw != "fixed"):
            raise VariantConfigError(
                "performer: learnable_projection=True needs head_dim and redraw='fixed' (the "
                f"rows are drawn once, at construction); got head_dim={head_dim}, redraw={redraw}"
            )
        self.learnable_projection = learnable_projection
        self._generator = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", None)
        if redraw == "fixed" and head_dim is not None:
            rows = orthogonal_gaussian_projection(nb_features, head_dim, self._generator)
            if learnable_projection:  # the buffer slot gives way to a parameter of that name
                del self._buffers["projection"]
                self.projection = torch.nn.Parameter(rows)
            else:
                self.projection = rows

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
        phi_q = softmax_kernel_features(q * root_scale, proj, "row", self.eps)
        phi_k = softmax_kernel_features(k * root_scale, proj, "global", self.eps)
        return phi_q, phi_k

    def _eps_causal_reason(self) -> str:
        return (
            f"performer: eps={self.eps} with causal attention is not supported: the key shift "
            "(the max of W k over all keys) no longer cancels, so it would carry future keys "
            "into every output (performer-pytorch does this); use eps=0 for causal attention"
        )

    def not_supported_reasons(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, causal)
        if causal and self.eps:
            reasons.append(self._eps_causal_reason())
        return reasons

    def decode_not_supported_reasons(self, q: Tensor, k: Tensor, v: Tensor) -> list[str]:
        reasons = self.not_supported_reasons(q, k, v, causal=True)
        if self.redraw == "every_call":
            reasons.append(
                "performer: redraw='every_call' has no decode form: each step would draw new "
                "features, which the state built from the earlier keys' features does not match"
            )
        return reasons

    def _unbiased(self) -> bool:
        """Whether :meth:`forward` takes the fast path (softmax kernel, ``eps = 0``)."""
        return self.kernel == "softmax" and not self.eps

    def attention_features(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """The features :meth:`forward` uses: :meth:`features` up to per-query-row factors.

        With ``eps = 0`` every factor that is constant along a query's row of features
        (``exp(-|q|^2 / 2)``, the row max, ``1 / sqrt(m)``) cancels between numerator and
        denominator, so the query features are ``softmax(W q)``: one fused kernel (in place
        when no gradient is taken) instead of a max, a subtraction and an exp over ``(N, m)``.
        The key features keep ``exp(W k - |k|^2 / 2 - c)`` (``c`` one constant per head). The
        scale is folded into ``W`` (an ``(m, d)`` product instead of a pass over q and k), and
        ``|k|^2`` is subtracted per row instead of riding along as an extra GEMM column.
        Otherwise (relu, ``eps > 0``) these are :meth:`features`.
        """
        if not self._unbiased():
            return self.features(q, k)
        w = self._scaled_rows(q)
        return query_features(q, w), self._key_features(k, w)

    def _scaled_rows(self, q: Tensor) -> Tensor:
        """``W^T sqrt(scale)``, ``(d, m)`` in q's dtype: the scale folded into the rows."""
        proj = self._projection(q.shape[-1], q)
        return (proj.to(q.dtype) * math.sqrt(self.softmax_scale(q.shape[-1]))).transpose(0, 1)

    def _key_features(self, k: Tensor, w: Tensor) -> Tensor:
        """``exp(k W^T - |k|^2 scale / 2 - c)``, ``c`` the max over a head's keys, detached."""
        scale = self.softmax_scale(k.shape[-1])
        logits = k @ w  # (B, H, Nk, m)
        norm = torch.linalg.vector_norm(k, dim=-1, keepdim=True)  # (B, H, Nk, 1)
        with torch.no_grad():  # the shift cancels: a constant for autograd
            top = logits.amax(dim=-1, keepdim=True)  # max of W k - |k|^2 / 2 over keys:
            shift = torch.addcmul(top, norm, norm, value=-0.5 * scale).amax(-2, keepdim=True)
        bias = torch.addcmul(shift, norm, norm, value=0.5 * scale)  # |k|^2 / 2 + shift
        return ShiftedExp.apply(logits, bias)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        check_qkv(q, k, v)
        if causal:
            return self._causal(q, k, v)
        heads, qg = q.shape[1], grouped_queries(q, k.shape[1])  # (B, Hkv, G * Nq, D)
        if not self._unbiased():
            return ungroup(kernel_attention(*self.features(qg, k), v), heads)  # (B, H, Nq, Dv)
        # The denominator rides along as an extra column of ones in V: one pass over phi_q.
        v_ones = with_ones_column(v)  # (B, Hkv, Nk, Dv + 1)
        w = self._scaled_rows(q)
        phi_k = self._key_features(k, w)
        # the keys' summary first: their features' buffer then holds q's; as (V^T phi_k)^T:
        # phi_k's gradient then comes out in phi_k's own layout (the transposed product's
        # would be transposed, copied before the GEMM's backward)
        kv = (v_ones.transpose(-2, -1) @ phi_k).transpose(-2, -1)  # (B, Hkv, m, Dv + 1)
        tracked = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, w))
        spent = None if tracked or qg.shape != k.shape else phi_k
        out = query_features(qg, w, spent) @ kv  # (B, Hkv, G * Nq, Dv + 1)
        out = out[..., :-1] / out[..., -1:].clamp_min(torch.finfo(q.dtype).tiny)
        return ungroup(out, heads)  # (B, H, Nq, Dv)

    def decode_maps(self, q: Tensor) -> tuple[FeatureMaps, tuple[Tensor, ...]]:
        """The causal path's feature maps and rows (key logits with a running max)."""
        if self.kernel == "relu":  # no shift
            return RELU_MAPS, (self._projection(q.shape[-1], q).to(q.dtype),)
        key = partial(key_logits, scale=self.softmax_scale(q.shape[-1]))
        return FeatureMaps(query_features, key, key_is_log=True), (self._scaled_rows(q),)

    def keys_are_logits(self) -> bool:
        return self.kernel == "softmax"

    def feature_parameters(self, heads: int, head_dim: int) -> int:
        return self.nb_features * head_dim

    def _causal(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The streamed causal prefix sums, which make the features group by group."""
        if self.eps:
            raise ValueError(self._eps_causal_reason())
        group = group_size(q, k)
        k, v = repeat_kv(k, group), repeat_kv(v, group)  # (B, H, Nk, *)
        maps, params = self.decode_maps(q)
        return self.causal_prefix(q, k, v, maps, params)

    def _feature_flops(self, q_len: int, kv_len: int, head_dim: int) -> int:
        """Per-head FLOPs of the feature GEMMs ``W x`` (``K = d``; ``d + 1`` with ``eps > 0``:
        the extra ``|x|^2`` column)."""
        return 2 * (q_len + kv_len) * self.nb_features * (head_dim + (1 if self.eps else 0))

    def _sides(self, heads, q_len, kv_len, head_dim, kv_heads, backward=False) -> int:
        """Per-batch FLOPs of the bidirectional form: the queries' features and read-out per
        query head, the keys' features and ``(m, Dv + 1)`` summary per KV head."""
        factor = (2 if self.learnable_projection else 1) if backward else 1
        keys = heads if kv_heads is None else kv_heads
        q_side = factor * self._feature_flops(q_len, 0, head_dim)
        k_side = factor * self._feature_flops(0, kv_len, head_dim)
        q_side += self.attention_flops(q_len, 0, head_dim, False, backward)
        k_side += self.attention_flops(0, kv_len, head_dim, False, backward)
        return heads * q_side + keys * k_side

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
        if not causal:
            return batch * self._sides(heads, q_len, kv_len, head_dim, kv_heads)
        # causal: k and v repeated to the query heads
        feats = self._feature_flops(q_len, kv_len, head_dim)
        return batch * heads * (feats + self.attention_flops(q_len, kv_len, head_dim, causal))

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
        # The feature GEMM needs d(x) (1x), dW too for learnable rows (2x); the causal backward
        # also computes it again (1x). The attention's matmuls take both gradients (2x).
        if not causal:
            return batch * self._sides(heads, q_len, kv_len, head_dim, kv_heads, backward=True)
        factor = (2 if self.learnable_projection else 1) + causal
        feats = factor * self._feature_flops(q_len, kv_len, head_dim)
        return (
            batch * heads * (feats + self.attention_flops(q_len, kv_len, head_dim, causal, True))
        )

    def feature_count(self, head_dim: int) -> int:
        return self.nb_features

    def analytic_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4, kv_heads=None
    ) -> int:
        m, d = self.nb_features, head_dim
        if causal:  # plus k and v repeated to the query heads
            repeated = repeat_bytes(batch, heads, kv_heads, kv_len, d, element_size)
            return self.causal_memory(batch, heads, q_len, head_dim, element_size) + repeated
        keys = heads if kv_heads is None else kv_heads
        # projections/features of queries and keys, and the output
        elements = heads * (2 * q_len * m + q_len * d) + keys * 2 * kv_len * m
        return batch * elements * element_size
