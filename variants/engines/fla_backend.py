"""flash-linear-attention's kernels as the CUDA backend of retention and the delta rule.

fla (Yang, Zhang et al., github.com/fla-org/flash-linear-attention) ships Triton kernels of the
linear-recurrent family. They take ``(B, T, H, K)`` tensors (time before heads) and keep states
``(B, H, K, V)``, key dimension first as :mod:`variants.engines.decay` and
:mod:`variants.engines.delta` do; these wrappers transpose, call the chunked kernels with
``scale=1`` (the callers have scaled q already) and return the suite's layout. The kernels run on
CUDA only; :func:`fla_problem` says why they cannot run elsewhere. The suite's own chunked
engines are the reference they are checked against (``scripts/gpu_run.sh``).
"""

from __future__ import annotations

import importlib.util

from torch import Tensor

#: Values of the variants' ``backend`` parameter.
BACKENDS = ("auto", "torch", "fla")


def fla_problem(device_type: str) -> str | None:
    """Why fla's kernels cannot run on ``device_type`` here; None when they can."""
    if device_type != "cuda":
        return f"fla's kernels are CUDA only (device {device_type})"
    if importlib.util.find_spec("fla") is None:
        return "flash-linear-attention is not installed (pip install flash-linear-attention)"
    return None


def resolve(backend: str, device_type: str) -> str:
    """``auto``: fla where it can run, the suite's chunked engine (``torch``) otherwise."""
    if backend == "auto":
        return "fla" if fla_problem(device_type) is None else "torch"
    return backend


def _time_major(*xs: Tensor) -> list[Tensor]:
    return [x.transpose(1, 2).contiguous() for x in xs]


def decay_attention_fla(
    q: Tensor, k: Tensor, v: Tensor, log_gamma: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`variants.engines.decay.decay_attention` on fla's ``chunk_simple_gla`` (a fixed
    decay per head: ``g_gamma``)."""
    from fla.ops.simple_gla import chunk_simple_gla

    qt, kt, vt = _time_major(q, k, v)
    out, final = chunk_simple_gla(
        qt, kt, vt, g_gamma=log_gamma.float(), scale=1.0, initial_state=state,
        output_final_state=True,
    )  # fmt: skip
    return out.transpose(1, 2), final


def delta_rule_fla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_alpha: Tensor | None = None,
    state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`variants.engines.delta.delta_rule` on fla's ``chunk_delta_rule`` (or
    ``chunk_gated_delta_rule`` with the gate)."""
    qt, kt, vt = _time_major(q, k, v)
    bt = beta.transpose(1, 2).contiguous()  # (B, T, H)
    if log_alpha is None:
        from fla.ops.delta_rule import chunk_delta_rule

        out, final = chunk_delta_rule(
            qt, kt, vt, bt, scale=1.0, initial_state=state, output_final_state=True
        )
    else:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        gt = log_alpha.transpose(1, 2).contiguous()
        out, final = chunk_gated_delta_rule(
            qt, kt, vt, gt, bt, scale=1.0, initial_state=state, output_final_state=True
        )
    return out.transpose(1, 2), final


class FlaBackend:
    """Mixin of retention and DeltaNet: the ``backend`` parameter (:data:`BACKENDS`), its
    refusal where fla cannot run, and ``resolved_backend`` in ``config()`` (the rows' record
    of which engine ran). Decode steps (1-4 tokens) always use the suite's engine."""

    name: str
    backend: str
    _last_backend: str | None = None

    def backend_for(self, x: Tensor) -> str:
        """The engine that runs inputs like ``x`` (remembered for ``config()``)."""
        self._last_backend = resolve(self.backend, x.device.type)
        return self._last_backend

    def backend_problems(self, x: Tensor) -> list[str]:
        """Why the configured backend cannot run inputs like ``x`` (and the engine that would:
        rows of points that did not run record it too)."""
        self.backend_for(x)
        problem = fla_problem(x.device.type) if self.backend == "fla" else None
        return [f"{self.name}: backend=fla: {problem}"] if problem else []

    def config(self) -> dict:
        out = super().config()  # type: ignore[misc]
        out["resolved_backend"] = self._last_backend  # None until a forward ran
        return out
