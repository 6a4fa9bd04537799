"""The memory a pass is estimated to need, and the budget that refuses a pass before it runs.

Each pass is estimated on its own (a forward that fits is never refused because forward plus
backward would not). The variant's own model of the pass (``analytic_mem_bytes`` in the pass's
row) is:

* ``fwd``: :meth:`~variants.base.AttentionVariant.analytic_mem_bytes`, the forward's working
  memory;
* ``bwd`` and ``fwd_bwd``: the variant's ``backward_mem_bytes`` where it defines one, else
  :data:`BACKWARD_MEM_FACTOR` x the forward model: autograd keeps the forward's intermediates
  (1x), the backward allocates their gradients (about 1x) and its own temporaries (about 1x).

:func:`estimate_bytes` adds what the harness holds beside it: q, k, v (and for a backward pass
their grad leaves and gradients, 3x), and with accuracy on the float64 reference (inputs, the
reference output and uniform baseline for the rows it covers, four float64 score blocks, the
float64 gradients for a backward pass, and the effective attention matrix where it is computed).
It is a rough model; a real allocation failure is still caught and recorded as ``oom``.
"""

from __future__ import annotations

import inspect

from harness.measure import accuracy
from harness.measure.config import MeasureConfig
from variants.base import AttentionVariant

#: Backward (and forward+backward) memory as a multiple of the forward model (module docstring).
BACKWARD_MEM_FACTOR = 3


def grouped_kwargs(method, kv_heads: int | None) -> dict[str, int]:
    """``{"kv_heads": kv_heads}`` where grouped heads are asked for and ``method`` takes them."""
    if kv_heads is None:
        return {}
    try:
        takes = "kv_heads" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        takes = False
    return {"kv_heads": kv_heads} if takes else {}


def pass_model_bytes(
    variant: AttentionVariant,
    shape: tuple[int, ...],
    causal: bool,
    element_size: int,
    name: str,
    kv_heads: int | None = None,
) -> int:
    """The variant's memory model of pass ``name`` (``fwd``, ``bwd``, ``fwd_bwd``) in bytes.

    Args:
        variant: The built variant.
        shape: ``(batch, heads, q_len, kv_len, head_dim)``.
        causal: Causal attention.
        element_size: Bytes per element of the point's dtype.
        name: The pass.
        kv_heads: Key/value heads where fewer than ``heads`` (given to the models that take
            it); None: ``heads``.
    """
    model = variant.analytic_mem_bytes
    forward = model(*shape, causal, element_size=element_size, **grouped_kwargs(model, kv_heads))
    if name == "fwd":
        return int(forward)
    backward_model = getattr(variant, "backward_mem_bytes", None)
    if callable(backward_model):
        grouped = grouped_kwargs(backward_model, kv_heads)
        return int(backward_model(*shape, causal, element_size=element_size, **grouped))
    return int(BACKWARD_MEM_FACTOR * forward)


def estimate_bytes(
    variant: AttentionVariant,
    shape: tuple[int, ...],
    causal: bool,
    element_size: int,
    name: str,
    measure: MeasureConfig,
    ref_rows: int | None = None,
    kv_heads: int | None = None,
) -> int:
    """Estimated peak bytes of pass ``name`` with the harness's own tensors (module docstring).

    The first five arguments and ``kv_heads`` are :func:`pass_model_bytes`'s; ``measure`` holds
    the point's settings (``accuracy``, ``attn_matrix_max_n``) and ``ref_rows`` the query rows
    the reference covers (``None``: all). The inputs are counted with ``heads`` key/value heads
    (an upper bound with grouped heads).
    """
    b, h, nq, nk, d = shape
    backward = name != "fwd"
    inputs = b * h * (nq + 2 * nk) * d * element_size
    total = inputs * (3 if backward else 1)
    total += pass_model_bytes(variant, shape, causal, element_size, name, kv_heads)
    if measure.accuracy:
        rows = nq if ref_rows is None else ref_rows
        inputs64 = inputs * 8 // element_size
        total += inputs64 * (2 if backward else 1)  # float64 copies (and their gradients)
        total += 2 * 8 * b * h * rows * d  # reference output and uniform baseline
        total += 4 * 8 * min(accuracy.REF_BLOCK_ELEMENTS, b * h * rows * nk)
        if max(nq, nk) <= measure.attn_matrix_max_n:
            total += 3 * 8 * h * nq * nk
    return int(total)


def over_budget_reason(name: str, estimate: int, model: int, budget_gb: float) -> str:
    """The ``reason`` of an ``over_budget`` row: the pass's estimate and the budget."""
    return (
        f"refused before allocating: {name} estimated {estimate / 1e9:.2f} GB "
        f"(variant {model / 1e9:.2f} GB + inputs, gradients, reference) exceeds the budget "
        f"of {budget_gb:g} GB (measure.memory_budget_gb={budget_gb})"
    )
