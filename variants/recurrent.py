"""The frame the linear-recurrent operators share (retention, DeltaNet).

Both are causal recurrences with a constant-size state per query head, operators of their own
rather than approximations of softmax attention, with per-head parameters
(:mod:`variants.perhead`), fla's kernels as the CUDA backend (:mod:`variants.engines.fla_backend`)
and the suite's chunked engines elsewhere. :class:`RecurrentOperator` holds what they do alike:
the refusals, the forward, the decode form (prefill runs the chunked form and keeps its state; a
step of 1-4 tokens runs the same engine from that state), the state's size and the memory models
built on each operator's working set. An operator implements :meth:`RecurrentOperator.run`,
:meth:`RecurrentOperator.working_elements`, ``flops`` and ``backward_flops``.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import Tensor

from variants.base import AttentionVariant, check_choice, check_positive_int, check_qkv
from variants.decode import DecodeState, check_prefill, check_step
from variants.engines.fla_backend import BACKENDS, FlaBackend
from variants.engines.fla_backend import resolve as resolve_backend
from variants.grouped import repeat_bytes
from variants.perhead import PerHeadParameters
from variants.tuning import Knob, TunedEngine, check_auto

#: Tokens per chunk of the chunked forms: chosen by measurement on the machine that runs
#: (:mod:`variants.tuning`); 64 with tuning off (fla's default; 32 and 64 traded places on the
#: 2-core AMD build machine, 128 was slower).
CHUNK_KNOB = Knob("chunk_size", 64, (32, 64, 128))


class RecurrentOperator(TunedEngine, FlaBackend, PerHeadParameters, AttentionVariant):
    """Base of the causal linear-recurrent operators (module docstring)."""

    exact: ClassVar[bool] = False
    approximates_softmax: ClassVar[bool] = False
    supports_bidirectional: ClassVar[bool] = False
    supports_cross: ClassVar[bool] = False
    knob: ClassVar[str | None] = None
    supports_decode: ClassVar[bool] = True
    #: bf16 outputs: the engines compute in float32, the output carries bf16's 8 mantissa bits
    TOLERANCES = {**AttentionVariant.TOLERANCES, torch.bfloat16: (2e-2, 6e-2)}

    def _check_common(self, heads: int | None, chunk_size: int | None, backend: str) -> None:
        """Validate and set the parameters every operator has."""
        if heads is not None:
            check_positive_int(self.name, "heads", heads)
        self.chunk_size = check_auto(self.name, "chunk_size", chunk_size)
        self.backend = check_choice(self.name, "backend", backend, BACKENDS)

    @abc.abstractmethod
    def run(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        state: Tensor | None,
        start: int,
        engine: str,
        chunk: int,
    ) -> tuple[Tensor, Tensor]:
        """Outputs ``(B, H, N, Dv)`` in q's dtype for tokens at absolute positions ``start ..``
        after ``state`` (None: the empty state), and the state after them; ``engine`` is
        ``"torch"`` (chunks of ``chunk`` tokens) or ``"fla"``."""

    @abc.abstractmethod
    def working_elements(self, batch: int, heads: int, n: int, head_dim: int, saved: bool) -> int:
        """Elements of the forward's working set (``saved``: with every block's intermediates,
        as autograd keeps them for the backward)."""

    def state_columns(self, head_dim: int) -> int:
        """Columns of the ``(D, columns)`` state per query head."""
        return head_dim

    # ------------------------------------------------------------------------------ attention
    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        check_qkv(q, k, v)
        problems = self.not_supported_reasons(q, k, v, causal)
        if problems:
            raise ValueError("; ".join(problems))
        return self._whole(q, k, v)[0]

    def chunk(self) -> int:
        """Tokens per chunk of the last call (before one: the user's value or the default)."""
        return self.engine_value(CHUNK_KNOB)

    def _whole(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """A whole sequence from the empty state, the chunk size tuned on the suite's engine."""
        engine = self.backend_for(q)
        if engine != "torch":
            return self.run(q, k, v, None, 0, engine, self.chunk())

        def probe(values: dict, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return self.run(q, k, v, None, 0, "torch", values["chunk_size"])[0]

        values = self.engine_values((CHUNK_KNOB,), q, k, v, True, probe)
        return self.run(q, k, v, None, 0, "torch", values["chunk_size"])

    def engine_tunable(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> bool:
        return causal and resolve_backend(self.backend, q.device.type) == "torch"

    def not_supported_reasons(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> list[str]:
        reasons = super().not_supported_reasons(q, k, v, causal) + self.backend_problems(q)
        problem = self.shape_mismatch(q.shape[1], q.shape[-1])
        return reasons + ([problem] if problem else [])

    # ---------------------------------------------------------------------------- decode form
    @torch.no_grad()
    def prefill(self, q: Tensor, k: Tensor, v: Tensor, max_len: int | None = None):
        check_prefill(self.name, q, k, max_len)  # the state is constant: max_len is moot
        out, state = self._whole(q, k, v)
        return out, DecodeState({"s": state}, k.shape[-2])

    @torch.no_grad()
    def step(self, q: Tensor, k: Tensor, v: Tensor, state: DecodeState):
        t = check_step(self.name, q, k, v, state)
        out, state["s"] = self.run(q, k, v, state["s"], state.length, "torch", self.chunk())
        state.length += t
        return out, state

    def state_bytes(self, batch, kv_heads, context_len, head_dim, element_size=4, heads=None):
        # one state per query head (decays and write strengths differ per head), float32 at
        # least (the engines compute half precision in float32)
        heads = heads or self.heads or kv_heads
        return batch * heads * head_dim * self.state_columns(head_dim) * max(element_size, 4)

    def step_read_bytes(
        self, batch, heads, kv_heads, context_len, head_dim, q_tokens=1, element_size=4
    ) -> int:
        # the state, the new tokens' q, k, v and the per-head parameters (float32)
        state = self.state_bytes(batch, kv_heads, context_len, head_dim, element_size, heads)
        tokens = batch * q_tokens * (heads + 2 * kv_heads) * head_dim * element_size
        params = sum(p.numel() for p in self.initial_parameters(heads, head_dim).values())
        return state + tokens + 4 * params

    # ---------------------------------------------------------------------------- cost models
    def analytic_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4, kv_heads=None
    ) -> int:
        return self._memory(batch, heads, q_len, kv_len, head_dim, element_size, kv_heads)

    def backward_mem_bytes(
        self, batch, heads, q_len, kv_len, head_dim, causal, element_size=4, kv_heads=None
    ) -> int:
        """The harness's model of the backward pass: the forward's working set with every
        block's intermediates kept (autograd saves them), and half again for the gradients in
        flight (an upper bound of the measured peaks within 2.5x: test_recurrent_variants.py)."""
        saved = self._memory(batch, heads, q_len, kv_len, head_dim, element_size, kv_heads, True)
        return saved * 3 // 2

    def _memory(self, batch, heads, q_len, kv_len, head_dim, element_size, kv_heads, saved=False):
        work = self.working_elements(batch, heads, q_len, head_dim, saved)
        repeated = repeat_bytes(batch, heads, kv_heads, kv_len, head_dim, element_size)
        return work * max(element_size, 4) + repeated
