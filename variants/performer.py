"""Performer attention with FAVOR+ random features (Choromanski et al. 2020).

"Rethinking Attention with Performers" approximates the softmax kernel
``exp(q . k * scale)`` by ``phi(q) . phi(k)`` with positive random features
``phi(x) = exp(W x - |x|^2 / 2) / sqrt(m)`` (``x`` scaled by ``sqrt(scale)``), an unbiased
estimate for Gaussian rows ``w ~ N(0, I)``. The ``m = nb_features`` rows are drawn in orthogonal
blocks of ``head_dim`` rows (several blocks stacked when ``m > head_dim``), each row rescaled by
an independent chi(head_dim) norm so that it is marginally Gaussian, which lowers the variance.
Attention is then ``phi(Q) (phi(K)^T V) / phi(Q) phi(K)^T 1``: ``O(n * m * d)`` time and
``O(n * m)`` memory; causal attention streams chunked prefix sums (:mod:`variants._prefix`) that
make the features group by group and never form an ``(n, m)`` or ``(n, m, d)`` tensor.

Numerical stabilisation: before ``exp``, queries subtract the max of their own row of
projections and keys subtract one max over all keys and features of a head (causal: the running
max over the keys seen so far). These constants cancel between numerator and denominator, so the
ratio is unchanged. :meth:`features` returns
these features; the forward (with ``eps = 0``) uses :meth:`attention_features`, equal up to
factors that cancel: ``softmax(W q)`` for the queries (every factor constant along a query's
row cancels), one GEMM with ``K = d`` per input (docs/performance.md).

``eps`` (default 0: the unbiased FAVOR+ estimator) adds a constant to every feature after the
shift, ``phi(x) = (exp(W x - |x|^2 / 2 - c) + eps) / sqrt(m)``, with ``c`` the max of ``W x``
(per query row; for keys over all keys and features of a head). This is the choice of the
widely used ``performer-pytorch`` (lucidrains, transcribed from google-research's JAX code),
whose default is ``eps=1e-4``. Because the shift makes the largest feature about
``exp(-|x|^2 / 2)``, a fixed ``eps`` is not a negligible floor: it pulls every weight toward
uniform attention. On diffuse inputs that lowers the error (n=512, d=64, 256 features, unit
Gaussian q, k, v: rel_err about 0.8 against 3.4 for the unbiased estimator, whose variance is
large there), and the output tends to the mean of V rather than to softmax attention (d=16,
n=256, unit inputs: 0.90 against 0.87 for uniform attention). With ``eps=0`` the shift is the
max of ``W x - |x|^2 / 2`` and cancels. With ``eps > 0`` the key shift does not cancel, so it
would carry future keys into causal outputs: causal attention needs ``eps=0``.

``kernel="relu"`` is the paper's generalised-attention variant ``phi(x) = relu(W x) / sqrt(m)``
plus a small constant (1e-3) that keeps the denominator positive; it does not estimate softmax.

Causal cross-attention (``q_len < kv_len``) is supported with the suite's bottom-right alignment.

Parameters, their defaults and meaning: :class:`PerformerAttention` (``nb_features`` is the
accuracy knob; ``learnable_projection`` makes the rows trainable for attention transfer).
"""

from __future__ import annotations

import math
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor

from variants._prefix import (
    FeatureMaps,
    causal_linear_attention,
    kernel_attention,
    with_ones_column,
)
from variants._prefix_costs import StreamedKernelAttention
from variants.base import (
    AttentionVariant,
    VariantConfigError,
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


class _ShiftedExp(torch.autograd.Function):
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


class PerformerAttention(StreamedKernelAttention, AttentionVariant):
    """FAVOR+ attention: positive orthogonal random features for the softmax kernel.

    Args:
        nb_features: Number of random features ``m`` (>= 1; may exceed head_dim). Default 256.
        redraw: "fixed" (drawn once from ``seed``) or "every_call" (new draw per forward).
        kernel: "softmax" (FAVOR+, unbiased for exp) or "relu" (generalised attention).
        chunk_size: Tokens per chunk of the causal prefix sum. Default 32.
        seed: Seed of the random features.
        kv_len: Ignored (accepted for a uniform constructor).
        head_dim: Head dimension; with "fixed" the features are drawn here (else on first call).
        scale: Softmax scale; default ``1/sqrt(head_dim)``.
        eps: Constant added to the softmax-kernel features after the max shift (>= 0; default
            0, the unbiased estimator; performer-pytorch uses 1e-4). Module docstring.
        learnable_projection: Make the random rows a trainable ``nn.Parameter`` (initialised
            from the same draw). Needs ``head_dim`` and ``redraw="fixed"``. Default False.
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
        chunk_size: int = 32,
        seed: int = 0,
        kv_len: int | None = None,
        head_dim: int | None = None,
        scale: float | None = None,
        eps: float = 0.0,
        learnable_projection: bool = False,
    ) -> None:
        super().__init__(kv_len=kv_len, head_dim=head_dim, scale=scale)
        self.nb_features = check_positive_int(self.name, "nb_features", nb_features)
        self.redraw = check_choice(self.name, "redraw", redraw, REDRAWS)
        self.kernel = check_choice(self.name, "kernel", kernel, KERNELS)
        self.chunk_size = check_positive_int(self.name, "chunk_size", chunk_size)
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
        return _ShiftedExp.apply(logits, bias)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        check_qkv(q, k, v)
        if causal:
            return self._causal(q, k, v)
        if not self._unbiased():
            return kernel_attention(*self.features(q, k), v)  # (B, H, Nq, Dv)
        # The denominator rides along as an extra column of ones in V: one pass over phi_q.
        v_ones = with_ones_column(v)  # (B, H, Nk, Dv + 1)
        w = self._scaled_rows(q)
        phi_k = self._key_features(k, w)
        # the keys' summary first: their features' buffer then holds q's; as (V^T phi_k)^T:
        # phi_k's gradient then comes out in phi_k's own layout (the transposed product's
        # would be transposed, copied before the GEMM's backward)
        kv = (v_ones.transpose(-2, -1) @ phi_k).transpose(-2, -1)  # (B, H, m, Dv + 1)
        tracked = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, w))
        spent = None if tracked or q.shape != k.shape else phi_k
        out = query_features(q, w, spent) @ kv  # (B, H, Nq, Dv + 1)
        return out[..., :-1] / out[..., -1:].clamp_min(torch.finfo(q.dtype).tiny)

    def _causal(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The streamed causal prefix sums, which make the features group by group."""
        if self.eps:
            raise ValueError(self._eps_causal_reason())
        if self.kernel == "relu":  # no shift
            maps, rows = RELU_MAPS, self._projection(q.shape[-1], q).to(q.dtype)
        else:
            key = partial(key_logits, scale=self.softmax_scale(q.shape[-1]))
            maps, rows = FeatureMaps(query_features, key, key_is_log=True), self._scaled_rows(q)
        return causal_linear_attention(q, k, v, maps, self.chunk_size, (rows,))

    def _feature_flops(self, q_len: int, kv_len: int, head_dim: int) -> int:
        """Per-head FLOPs of the feature GEMMs ``W x`` (``K = d``; ``d + 1`` with ``eps > 0``:
        the extra ``|x|^2`` column)."""
        return 2 * (q_len + kv_len) * self.nb_features * (head_dim + (1 if self.eps else 0))

    def flops(
        self, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool
    ) -> int:
        feats = self._feature_flops(q_len, kv_len, head_dim)
        return batch * heads * (feats + self.attention_flops(q_len, kv_len, head_dim, causal))

    def backward_flops(
        self, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool
    ) -> int:
        # The feature GEMM needs d(x) (1x), dW too for learnable rows (2x); the causal backward
        # also computes it again (1x). The attention's matmuls take both gradients (2x).
        factor = (2 if self.learnable_projection else 1) + causal
        feats = factor * self._feature_flops(q_len, kv_len, head_dim)
        return (
            batch * heads * (feats + self.attention_flops(q_len, kv_len, head_dim, causal, True))
        )

    def feature_count(self, head_dim: int) -> int:
        return self.nb_features

    def analytic_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4
    ) -> int:
        m, d = self.nb_features, head_dim
        if causal:
            return self.causal_memory(batch, heads, q_len, head_dim, element_size)
        per_head = 2 * (q_len + kv_len) * m + q_len * d  # projections/features, output
        return batch * heads * per_head * element_size
