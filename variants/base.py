"""The interface every attention variant implements (see ../shared/DESIGN.md).

A variant is a ``torch.nn.Module`` that maps ``q (B, H, Nq, D)``, ``k (B, H, Nk, D)`` and
``v (B, H, Nk, Dv)`` to ``(B, H, Nq, Dv)``. It declares what it supports as class constants and
answers :meth:`AttentionVariant.not_supported_reasons` with the reasons it cannot run a given
input, so that a sweep records *why* a point did not run instead of crashing or silently falling
back to another implementation.

Conventions shared by every variant:

* The softmax scale is ``1 / sqrt(D)`` unless the variant's config sets ``scale``.
* Causal attention with ``Nq != Nk`` is aligned to the **bottom right**: query ``i`` may attend
  to key ``j`` iff ``j <= i + (Nk - Nq)``, so the last query sees every key (the convention of
  ``flash-attn`` >= 2.1 and xformers' ``BottomRight`` masks). With ``Nq == Nk`` this is the usual
  lower-triangular mask.
* Every constructor accepts ``seq_len`` and ``head_dim`` (the shape the variant is built for;
  variants that do not need them ignore them); randomised variants also accept ``seed``.
* Parameters are validated in the constructor; a bad value raises :class:`VariantConfigError`
  naming the field and the allowed values.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

ALL_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class VariantConfigError(ValueError):
    """A variant parameter has a value outside its allowed range (message names the field)."""


class AttentionVariant(torch.nn.Module):
    """Base class of every attention implementation in the suite.

    Subclasses set the capability constants, implement :meth:`forward` and :meth:`flops`, and
    extend :meth:`not_supported_reasons` for anything beyond the generic checks.

    Args:
        seq_len: Sequence length the variant is built for (used by e.g. Linformer's projections).
        head_dim: Head dimension the variant is built for (used by e.g. Performer's features).
        scale: Softmax temperature; ``None`` means ``1 / sqrt(head_dim)`` of the inputs.
    """

    name: ClassVar[str] = "base"
    #: True when the variant computes softmax attention exactly (up to float rounding).
    exact: ClassVar[bool] = False
    supports_causal: ClassVar[bool] = True
    #: True when q_len != kv_len is supported.
    supports_cross: ClassVar[bool] = True
    #: True when the output depends on a random draw (seeded by ``seed``).
    randomized: ClassVar[bool] = False
    supports_backward: ClassVar[bool] = True
    supported_devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    supported_dtypes: ClassVar[tuple[torch.dtype, ...]] = ALL_DTYPES
    #: Name of the parameter that trades accuracy for cost (window, k, nb_features, ...).
    knob: ClassVar[str | None] = None

    def __init__(
        self,
        seq_len: int | None = None,
        head_dim: int | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if seq_len is not None:
            check_positive_int(self.name, "seq_len", seq_len)
        if head_dim is not None:
            check_positive_int(self.name, "head_dim", head_dim)
        if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
            raise VariantConfigError(f"{self.name}: scale={scale!r} must be a positive number")
        self.seq_len = seq_len
        self.head_dim = head_dim
        self.scale = None if scale is None else float(scale)

    # ----------------------------------------------------------------------------- interface
    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        """Attention output (B, H, Nq, Dv) for ``q (B, H, Nq, D)``, ``k``/``v (B, H, Nk, *)``."""
        raise NotImplementedError

    def flops(
        self, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool
    ) -> int:
        """Analytic forward FLOPs (a multiply-add counts 2). Backward is 2.5x this."""
        raise NotImplementedError

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
        """Model of the forward pass's peak working memory in bytes (beyond q, k, v).

        The default counts the output only; variants override it with their intermediates. The
        harness records it beside the measured peak and uses it to refuse points above the
        configured memory budget before allocating.
        """
        return batch * heads * q_len * head_dim * element_size

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
        if causal and q.shape[-2] > k.shape[-2]:
            reasons.append(
                f"{self.name}: causal with q_len={q.shape[-2]} > kv_len={k.shape[-2]} leaves "
                "queries with no visible key (bottom-right alignment); use q_len <= kv_len"
            )
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
        import inspect

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


# --------------------------------------------------------------------------------- validators
def check_int(
    owner: str | None,
    field: str,
    value: Any,
    low: int | None = None,
    high: int | None = None,
    error: type[Exception] = VariantConfigError,
) -> int:
    """Raise ``error`` unless ``value`` is an int (not a bool) in ``[low, high]``.

    The one integer validator of the project (variants, the harness's config and experiment
    checks all call it). The message names the owner and field and the allowed range, e.g.
    ``linformer: k=0 must be an integer >= 1``.

    Args:
        owner: Prefix of the message (a variant or experiment name), or None.
        field: The parameter's name.
        value: The value to check.
        low: Smallest allowed value (None: no bound).
        high: Largest allowed value (None: no bound).
        error: Exception class to raise (the harness passes its ``ConfigError``).
    """
    ok = not isinstance(value, bool) and isinstance(value, int)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        if low is not None and high is not None:
            allowed = f"in {low}..{high}"
        elif low is not None:
            allowed = f">= {low}"
        elif high is not None:
            allowed = f"<= {high}"
        else:
            allowed = ""
        prefix = f"{owner}: " if owner else ""
        raise error(f"{prefix}{field}={value!r} must be an integer {allowed}".rstrip())
    return value


def check_positive_int(variant: str, field: str, value: Any) -> int:
    """Raise :class:`VariantConfigError` unless ``value`` is an int >= 1."""
    return check_int(variant, field, value, low=1)


def check_nonneg_int(variant: str, field: str, value: Any) -> int:
    """Raise :class:`VariantConfigError` unless ``value`` is an int >= 0."""
    return check_int(variant, field, value, low=0)


def check_choice(variant: str, field: str, value: Any, allowed: tuple[str, ...]) -> str:
    """Raise :class:`VariantConfigError` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise VariantConfigError(
            f"{variant}: {field}={value!r} is not one of {', '.join(map(str, allowed))}"
        )
    return value


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Validate the shapes of q, k, v against the interface; raise ``ValueError`` naming them."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be 4-D (B, H, N, D); got q{tuple(q.shape)} k{tuple(k.shape)} "
            f"v{tuple(v.shape)}"
        )
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2]:
        raise ValueError(
            f"batch and heads must match: q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"head_dim mismatch: q has {q.shape[-1]}, k has {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"kv_len mismatch: k has {k.shape[-2]}, v has {v.shape[-2]}")


def causal_mask(q_len: int, kv_len: int, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``(q_len, kv_len)`` mask, True where query i may attend key j (bottom-right)."""
    offset = kv_len - q_len
    i = torch.arange(q_len, device=device).unsqueeze(1)
    j = torch.arange(kv_len, device=device).unsqueeze(0)
    return j <= i + offset
