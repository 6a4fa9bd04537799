"""The interface every attention variant implements (README.md, "Add a variant", shows one).

A variant is a ``torch.nn.Module`` that maps ``q (B, H, Nq, D)``, ``k (B, Hkv, Nk, D)`` and
``v (B, Hkv, Nk, Dv)`` to ``(B, H, Nq, Dv)`` (``Hkv`` dividing ``H``: grouped-query heads). It
declares what it supports as class constants and answers
:meth:`AttentionVariant.not_supported_reasons` with the reasons it cannot run a given input, so
that a sweep records *why* a point did not run instead of crashing or silently falling back to
another implementation.

Conventions shared by every variant:

* The softmax scale is ``1 / sqrt(D)`` unless the variant's config sets ``scale``.
* Causal attention with ``Nq != Nk`` is aligned to the **bottom right**: query ``i`` may attend
  to key ``j`` iff ``j <= i + (Nk - Nq)``, so the last query sees every key (the convention of
  ``flash-attn`` >= 2.1 and xformers' ``BottomRight`` masks). With ``Nq == Nk`` this is the usual
  lower-triangular mask.
* Every constructor accepts ``kv_len`` and ``head_dim``, the shape the variant is built for
  (``kv_len`` is the key/value length: Linformer's projections are ``k x kv_len``); variants that
  do not need them ignore them. Randomised variants also accept ``seed``.
* Parameters are validated in the constructor; a bad value raises :class:`VariantConfigError`
  naming the field and the allowed values (:mod:`variants.validation`).
"""

from __future__ import annotations

import abc
import inspect
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from variants.costs import exact_attention_flops, recomputing_backward_flops, visible_pairs
from variants.decode import DecodeForm, DecodeState
from variants.grouped import group_size, kv_heads_problem, repeat_bytes, repeat_kv
from variants.shapes import causal_mask, check_qkv
from variants.validation import (
    VariantConfigError,
    check_choice,
    check_int,
    check_nonneg_int,
    check_positive_int,
)

__all__ = [
    "ALL_DTYPES",
    "AttentionVariant",
    "DecodeState",
    "Tolerances",
    "VariantConfigError",
    "causal_mask",
    "check_choice",
    "check_int",
    "check_nonneg_int",
    "check_positive_int",
    "check_qkv",
    "exact_attention_flops",
    "recomputing_backward_flops",
    "visible_pairs",
]

ALL_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: ``dtype -> (atol, rtol)`` of a variant's outputs (or gradients) against the float64 reference.
Tolerances = dict[torch.dtype, tuple[float, float]]


class AttentionVariant(DecodeForm, torch.nn.Module, abc.ABC):
    """Base class of every attention implementation in the suite.

    Subclasses set the capability constants, implement the abstract :meth:`forward` and
    :meth:`flops`, and extend :meth:`not_supported_reasons` for anything beyond the generic
    checks. Keys and values may have fewer heads than the queries (grouped-query attention,
    :mod:`variants.grouped`): with ``gqa = "repeat"`` (the default) calling the module repeats
    them to the query heads before :meth:`forward`; ``"native"`` variants take them as they
    are. The optional decode form (``prefill``/``step``) is :class:`variants.decode.DecodeForm`.

    Args:
        kv_len: Key/value length the variant is built for (e.g. Linformer's projections).
        head_dim: Head dimension the variant is built for (used by e.g. Performer's features).
        scale: Softmax temperature; ``None`` means ``1 / sqrt(head_dim)`` of the inputs.
    """

    name: ClassVar[str] = "base"
    #: True when the variant computes softmax attention exactly (up to float rounding).
    exact: ClassVar[bool] = False
    supports_causal: ClassVar[bool] = True
    #: False for operators that are causal by construction (a recurrence over positions, such as
    #: retention and the delta rule): bidirectional points are then refused with
    #: :attr:`causal_only_reason`.
    supports_bidirectional: ClassVar[bool] = True
    #: Why a causal-only variant refuses bidirectional attention (its rows' reason).
    causal_only_reason: ClassVar[str] = "causal by construction"
    #: False for operators that are not approximations of softmax attention but their own
    #: (retention, the delta rule): rows carry it as ``approximates_softmax`` and the report
    #: leaves them off error-against-exact comparisons.
    approximates_softmax: ClassVar[bool] = True
    #: True when q_len != kv_len is supported.
    supports_cross: ClassVar[bool] = True
    #: True when the output depends on a random draw (seeded by ``seed``).
    randomized: ClassVar[bool] = False
    supports_backward: ClassVar[bool] = True
    supported_devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    supported_dtypes: ClassVar[tuple[torch.dtype, ...]] = ALL_DTYPES
    #: Name of the parameter that trades accuracy for cost (window, k, nb_features, ...).
    knob: ClassVar[str | None] = None
    #: True when the variant runs fused (FlashAttention-style) kernels whose backward recomputes
    #: the scores: :meth:`backward_flops` is then 2.5x the forward instead of 2x.
    recomputes_scores: ClassVar[bool] = False
    #: ``dtype -> (atol, rtol)`` the conformance kit holds the outputs to: elementwise where an
    #: output is compared with another output (causal independence), and ``rtol`` as the bound
    #: of the relative Frobenius error against the float64 reference (exact variants).
    TOLERANCES: ClassVar[Tolerances] = {
        torch.float16: (1e-3, 5e-3),
        torch.bfloat16: (1e-2, 3e-2),
        torch.float32: (1e-6, 1e-5),
        torch.float64: (1e-12, 1e-10),
    }
    #: The same for the gradients of q, k and v (exact variants, against the reference's).
    GRAD_TOLERANCES: ClassVar[Tolerances] = {
        torch.float16: (1e-2, 2e-2),
        torch.bfloat16: (5e-2, 6e-2),
        torch.float32: (1e-5, 1e-4),
        torch.float64: (1e-10, 1e-9),
    }

    def __init__(
        self,
        kv_len: int | None = None,
        head_dim: int | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if kv_len is not None:
            check_positive_int(self.name, "kv_len", kv_len)
        if head_dim is not None:
            check_positive_int(self.name, "head_dim", head_dim)
        if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
            raise VariantConfigError(f"{self.name}: scale={scale!r} must be a positive number")
        self.kv_len = kv_len
        self.head_dim = head_dim
        self.scale = None if scale is None else float(scale)
        #: Whether the variant's parameters were fitted (set True by a fitting step such as
        #: attention transfer); False for a freshly built variant, meaningful only for variants
        #: with trainable parameters (rows record it as ``trained``).
        self.trained = False

    # ----------------------------------------------------------------------------- interface
    def __call__(self, q: Tensor, k: Tensor, v: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if q.dim() == 4 and k.dim() == 4 and k.shape[1] != q.shape[1]:
            group = group_size(q, k)  # a kv_heads that does not divide heads: ValueError
            if self.gqa == "unsupported":
                raise ValueError(f"{self.name}: grouped heads (kv_heads < heads) not supported")
            if self.gqa == "repeat":
                k, v = repeat_kv(k, group), repeat_kv(v, group)  # (B, H, Nk, *)
        return super().__call__(q, k, v, *args, **kwargs)

    @abc.abstractmethod
    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        """Attention output (B, H, Nq, Dv) for ``q (B, H, Nq, D)``, ``k``/``v (B, Hkv, Nk, *)``
        (``Hkv == H`` unless ``gqa == "native"``: the call repeats them otherwise)."""

    @abc.abstractmethod
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
        """Analytic forward FLOPs (a multiply-add counts 2) of the work this kernel does;
        ``kv_heads`` (default ``heads``) where grouped heads change the work."""

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
        """Analytic backward FLOPs: by default twice :meth:`flops`.

        The gradient of a matmul ``C = A @ B`` is two matmuls of the same size
        (``dA = dC @ B^T``, ``dB = A^T @ dC``), so a variant built from matmuls that keeps its
        intermediates costs 2x its forward. A fused kernel that recomputes the scores
        (``recomputes_scores``) costs 2.5x (:func:`recomputing_backward_flops`). Variants
        whose backward does other work override it (e.g. a matmul with a fixed operand needs
        one gradient matmul, not two).
        """
        grouped = {} if kv_heads is None else {"kv_heads": kv_heads}
        forward = self.flops(batch, heads, q_len, kv_len, head_dim, causal, **grouped)
        return recomputing_backward_flops(forward) if self.recomputes_scores else 2 * forward

    def analytic_mem_bytes(
        self,
        batch: int,
        heads: int,
        q_len: int,
        kv_len: int,
        head_dim: int,
        causal: bool,
        element_size: int = 4,
        kv_heads: int | None = None,
    ) -> int:
        """Model of the forward pass's peak working memory in bytes (beyond q, k, v).

        The default counts the output (and k, v repeated to the query heads when ``kv_heads <
        heads`` and ``gqa == "repeat"``); variants override it with their intermediates. The
        harness records it beside the measured peak and uses it to refuse points above the
        configured memory budget before allocating.
        """
        out = batch * heads * q_len * head_dim * element_size
        if self.gqa == "repeat":
            out += repeat_bytes(batch, heads, kv_heads, kv_len, head_dim, element_size)
        return out

    def not_supported_reasons(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> list[str]:
        """Reasons this variant cannot run these inputs; empty when it can."""
        reasons: list[str] = []
        if q.device.type not in self.supported_devices:
            reasons.append(
                f"{self.name}: device {q.device.type} not supported "
                f"(supported: {', '.join(self.supported_devices)})"
            )
        if q.dtype not in self.supported_dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.supported_dtypes)
            reasons.append(
                f"{self.name}: dtype {str(q.dtype).replace('torch.', '')} not supported "
                f"(supported: {names})"
            )
        if causal and not self.supports_causal:
            reasons.append(f"{self.name}: causal attention is not supported by this variant")
        if not causal and not self.supports_bidirectional:
            why = self.causal_only_reason
            reasons.append(f"{self.name}: bidirectional attention is not supported ({why})")
        if causal and q.shape[-2] > k.shape[-2]:
            reasons.append(
                f"{self.name}: causal with q_len={q.shape[-2]} > kv_len={k.shape[-2]} leaves "
                "queries with no visible key (bottom-right alignment); use q_len <= kv_len"
            )
        if k.shape[1] != q.shape[1]:
            problem = kv_heads_problem(q.shape[1], k.shape[1])
            if problem or self.gqa == "unsupported":
                why = problem or "grouped heads (kv_heads < heads) are not supported"
                reasons.append(f"{self.name}: {why}")
        if q.shape[-2] != k.shape[-2] and not self.supports_cross:
            reasons.append(
                f"{self.name}: cross-attention (q_len={q.shape[-2]} != kv_len={k.shape[-2]}) "
                "is not supported"
            )
        return reasons

    def setup(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> None:
        """One-time preparation for inputs of this shape (compilation, masks, features).

        The harness calls and times it once before any timed call and records it as
        ``setup_ms``; the default does nothing.
        """

    def build_parameters(self, heads: int, head_dim: int) -> None:
        """Build the parameters that depend on the number of heads (a per-head feature map or
        vector) for ``heads`` x ``head_dim``; a model calls it before its optimiser collects the
        parameters. Default: nothing to build."""

    def tune(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False, backward=True):
        """Choose the engine parameters left to the tuner for these inputs, before any timed
        call (:mod:`variants.tuning`); returns :meth:`engine_config`. Default: none."""
        return {}

    def engine_config(self) -> dict[str, Any]:
        """The engine parameters the last call used, each with ``<name>_tuned`` (chosen by
        measurement); ``{}`` when it had none."""
        return {}

    def config(self) -> dict[str, Any]:
        """The variant's parameters as a JSON-serialisable dict (recorded in every row)."""
        out: dict[str, Any] = {}
        for key in self._config_keys():
            value = getattr(self, key, None)
            if isinstance(value, torch.dtype):
                value = str(value).replace("torch.", "")
            out[key] = value
        return out

    def _config_keys(self) -> list[str]:
        """Parameter names of the constructor, read from its signature."""
        sig = inspect.signature(type(self).__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]

    # ----------------------------------------------------------------------------- helpers
    def softmax_scale(self, head_dim: int) -> float:
        """The scale applied to q.k: the configured one or ``1/sqrt(head_dim)``."""
        return self.scale if self.scale is not None else 1.0 / math.sqrt(head_dim)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())
