"""Any attention variant inside a ``transformers`` model: the attention-function adapter.

``transformers`` (>= 4.53, written against 5.x) has a registry of attention functions,
``AttentionInterface``; a model whose ``attn_implementation`` names one calls it in every layer
as ``fn(module, query, key, value, attention_mask, scaling=..., dropout=..., **kwargs)`` with
``query (B, H, Nq, D)``, ``key``/``value (B, H, Nk, D)``, and expects ``(attn_output (B, Nq, H,
D), attn_weights or None)``. :func:`register_variant` wraps an :class:`AttentionVariant` in such
a function (:func:`make_attention_function`: padding and scale) and also registers ``sdpa``'s
mask builder under the same name, because transformers hands a custom implementation without a
mask builder *no padding mask at all*.

Public: :class:`VariantUnsupported`, :func:`make_attention_function`, :func:`register_variant`,
:func:`unregister`, :func:`use_variant`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from harness.minilm.model import require_transformers
from variants.base import AttentionVariant, causal_mask

_names = itertools.count()


class VariantUnsupported(RuntimeError):
    """The variant cannot run the inputs the model hands it; ``reasons`` says why."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


# ------------------------------------------------------------------------------- the adapter
def _allowed(mask: Tensor) -> Tensor:
    """Boolean ``(B, Nq, Nk)`` "may attend" from a boolean or additive 4-D mask."""
    if mask.dim() != 4:
        raise VariantUnsupported([f"attention mask of shape {tuple(mask.shape)} is not 4-D"])
    if mask.shape[1] != 1 and not bool((mask == mask[:, :1]).all()):
        raise VariantUnsupported(["per-head attention masks are not supported by the adapter"])
    mask = mask[:, 0]
    if mask.dtype == torch.bool:
        return mask
    # additive masks (eager): 0 where allowed, the dtype's minimum or -inf where not
    return mask > torch.finfo(mask.dtype).min / 2


def _key_valid(mask: Tensor | None, q_len: int, kv_len: int, causal: bool) -> Tensor | None:
    """Valid keys ``(B, Nk)`` of a key-padding mask (``None``: no padding anywhere).

    Any other mask pattern (a sliding window, packed sequences) would be silently lost by a
    variant that takes no mask, so it is refused with a reason instead.
    """
    if mask is None:
        return None
    allowed = _allowed(mask)  # (B, Nq, Nk)
    valid = allowed.any(dim=-2)  # (B, Nk): a key some query may see
    expected = valid[:, None, :].expand_as(allowed)
    if causal:
        expected = expected & causal_mask(q_len, kv_len, device=mask.device)
    if q_len == kv_len:
        # a padded query row may be anything (fully masked or like the others): compare real rows
        rows = valid[:, :, None].expand_as(allowed)
        same = bool(((allowed == expected) | ~rows).all())
    else:
        same = bool((allowed == expected).all())
    if not same:
        reason = (
            "the model's attention mask is not a key-padding mask (the adapter honours padding "
            "and the causal flag only)"
        )
        raise VariantUnsupported([reason])
    return None if bool(valid.all()) else valid


@contextlib.contextmanager
def _model_scale(
    variant: AttentionVariant, scaling: float | None, head_dim: int
) -> Iterator[None]:
    """Run the variant with the model's softmax scale for the duration of one call."""
    if scaling is None:
        yield
        return
    if "scale" not in variant._config_keys():
        if not math.isclose(scaling, 1.0 / math.sqrt(head_dim), rel_tol=1e-6):
            raise VariantUnsupported(
                [
                    f"{variant.name}: the model needs softmax scale {scaling:.6g} but the variant "
                    "has no scale parameter"
                ]
            )
        yield
        return
    previous = variant.scale
    variant.scale = float(scaling)
    try:
        yield
    finally:
        variant.scale = previous


def _run_variant(
    variant: AttentionVariant, q: Tensor, k: Tensor, v: Tensor, causal: bool
) -> Tensor:
    reasons = variant.not_supported_reasons(q, k, v, causal)
    if reasons:
        raise VariantUnsupported(reasons)
    # The model hands transposed views; variants are written (and tested) for contiguous inputs
    # as the harness makes them, and some reshape with .view.
    q, k, v = (t.contiguous() for t in (q, k, v))
    return variant(q, k, v, causal=causal)  # (B, H, Nq, Dv)


def make_attention_function(variant: AttentionVariant) -> Callable[..., tuple[Tensor, None]]:
    """A transformers attention function that runs ``variant``.

    Padding. Variants take no mask, so the function runs every sequence at its true length: the
    batch is grouped by the set of valid (unpadded) keys, each group's valid tokens are
    gathered, the variant runs on them, and the outputs are scattered back; outputs at padded
    query positions are zero (nothing reads them: pooling and the next layer's keys exclude
    them). The loop is over groups of batch items, never over tokens. Padding therefore never
    changes a real token's output, whatever the variant (tested). A variant that cannot run a
    group's inputs (``not_supported_reasons``: length limits, causal-only, ...) raises
    :class:`VariantUnsupported` with the reasons.

    Scale. The model's ``scaling`` is passed to the variant as its ``scale`` for the call when
    its constructor takes ``scale`` (the model's temperature wins over the variant's configured
    one, since the weights were trained with it); a variant without ``scale`` is unsupported
    when the model's scaling differs from ``1/sqrt(D)`` (MiniLM's does not).

    Args:
        variant: Any attention variant, built-in or plugin.

    Returns:
        ``fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs)
        -> (attn_output (B, Nq, H, D), None)``.
    """

    def attention(
        module: torch.nn.Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[Tensor, None]:
        if dropout and module.training:
            warnings.warn(
                f"{variant.name}: attention dropout {dropout} is ignored by the attnbench adapter",
                stacklevel=2,
            )
        causal = kwargs.get("is_causal")
        causal = bool(getattr(module, "is_causal", False) if causal is None else causal)
        b, _, nq, d = query.shape
        nk = key.shape[-2]
        valid = _key_valid(attention_mask, nq, nk, causal)
        with _model_scale(variant, scaling, d):
            if valid is None:
                out = _run_variant(variant, query, key, value, causal)  # (B, H, Nq, Dv)
            else:
                out = query.new_zeros(b, query.shape[1], nq, value.shape[-1])
                # group the batch items with the same valid keys: one variant call per group
                groups: dict[bytes, list[int]] = {}
                for i in range(b):
                    groups.setdefault(valid[i].cpu().numpy().tobytes(), []).append(i)
                for items in groups.values():
                    rows = torch.tensor(items, device=query.device)
                    keys = valid[items[0]].nonzero().squeeze(-1)  # (Lk,)
                    k_g = key[rows][:, :, keys]  # (G, H, Lk, D)
                    v_g = value[rows][:, :, keys]  # (G, H, Lk, Dv)
                    if nq == nk:  # self-attention: padded queries are dropped as well
                        q_g = query[rows][:, :, keys]  # (G, H, Lk, D)
                        o_g = _run_variant(variant, q_g, k_g, v_g, causal)
                        block = out[rows]
                        block[:, :, keys] = o_g.to(out.dtype)
                        out[rows] = block
                    else:
                        out[rows] = _run_variant(variant, query[rows], k_g, v_g, causal).to(
                            out.dtype
                        )
        return out.transpose(1, 2).contiguous(), None  # (B, Nq, H, Dv)

    attention.__name__ = f"attnbench_{variant.name}_attention"
    return attention


def register_variant(variant: AttentionVariant, name: str | None = None) -> str:
    """Register ``variant`` as a transformers attention implementation; returns its name.

    Args:
        variant: The variant to run in every attention layer of a model.
        name: Implementation name; default ``attnbench_<variant>_<n>``, unique per call.
            Registering an existing name replaces its function.

    Returns:
        The name to pass as ``attn_implementation=`` or to ``model.set_attn_implementation``.
    """
    transformers = require_transformers()
    name = name or f"attnbench_{variant.name}_{next(_names)}"
    transformers.AttentionInterface.register(name, make_attention_function(variant))
    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:  # transformers < 4.53 builds an eager 4-D mask for any implementation
        return name
    # Without a mask builder of its own name, transformers passes attention_mask=None to a
    # custom implementation, i.e. padded keys would be attended. sdpa's builder gives a boolean
    # (B, 1, Nq, Nk) mask, True where allowed, or None when nothing is padded.
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def unregister(name: str) -> None:
    """Remove an implementation registered by :func:`register_variant`."""
    from transformers import AttentionInterface

    AttentionInterface._global_mapping.pop(name, None)
    with contextlib.suppress(ImportError):
        from transformers.masking_utils import AttentionMaskInterface

        AttentionMaskInterface._global_mapping.pop(name, None)


@contextlib.contextmanager
def use_variant(model: Any, variant: AttentionVariant | None) -> Iterator[Any]:
    """Run ``model`` with ``variant`` in every attention layer inside the ``with`` block.

    ``None`` leaves the model's own implementation. The previous implementation is restored and
    the registration removed on exit, so the shared cached model is left as it was.
    """
    if variant is None:
        yield model
        return
    previous = model.config._attn_implementation
    name = register_variant(variant)
    try:
        model.set_attn_implementation(name)
        yield model
    finally:
        model.set_attn_implementation(previous)
        unregister(name)
