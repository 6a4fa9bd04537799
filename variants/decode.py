"""The decode form of the variant interface: prefill a prompt, then step a few tokens at a time.

A variant with ``supports_decode = True`` answers :meth:`DecodeForm.prefill` (the causal forward
over the prompt and the state it leaves) and :meth:`DecodeForm.step` (1..``MAX_STEP_TOKENS`` new
tokens against the state, updated in place), and models the state's size
(:meth:`DecodeForm.state_bytes`) and what one step reads (:meth:`DecodeForm.step_read_bytes`).
The state is a :class:`DecodeState`: a KV cache, a ring buffer or a running sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor

#: Most new tokens one :meth:`DecodeForm.step` takes (speculative or multi-token decoding).
MAX_STEP_TOKENS = 4
#: How a variant's ``forward`` handles ``kv_heads < heads`` (:attr:`DecodeForm.gqa`).
GQA_MODES = ("native", "repeat", "unsupported")


class DecodeUnsupportedError(NotImplementedError):
    """Raised by prefill/step (and the state models) of a variant without a decode form; the
    message is its ``no_decode_reason``. Harness code asks
    :meth:`DecodeForm.decode_not_supported_reasons` first and records the point as
    ``unsupported``, so this is what a direct call gets."""


@dataclass
class DecodeState:
    """The tensors a decode step reads and updates, and the tokens seen so far.

    Attributes:
        tensors: Named state tensors (``k``, ``v`` of a KV cache; ``kv`` of a running sum ...).
        length: Tokens absorbed so far (prompt and steps).
    """

    tensors: dict[str, Tensor] = field(default_factory=dict)
    length: int = 0

    def __getitem__(self, name: str) -> Tensor:
        return self.tensors[name]

    def __setitem__(self, name: str, value: Tensor) -> None:
        self.tensors[name] = value

    def nbytes(self) -> int:
        """Measured size: the bytes of the storages behind the tensors (each counted once)."""
        storages = {}
        for tensor in self.tensors.values():
            storage = tensor.untyped_storage()
            storages[(tensor.device, storage.data_ptr())] = storage.nbytes()
        return sum(storages.values())


def check_step(name: str, q: Tensor, k: Tensor, v: Tensor, state: DecodeState) -> int:
    """The step's token count ``T``; ``ValueError`` naming the field when it is not 1..4."""
    t = q.shape[-2]
    if not 1 <= t <= MAX_STEP_TOKENS:
        raise ValueError(f"{name}: step tokens={t} must be 1..{MAX_STEP_TOKENS}")
    if k.shape[-2] != t or v.shape[-2] != t:
        raise ValueError(
            f"{name}: step q, k, v must have the same tokens; got {t}, {k.shape[-2]}, "
            f"{v.shape[-2]}"
        )
    if not isinstance(state, DecodeState):
        raise TypeError(f"{name}: state must be the DecodeState prefill returned")
    return t


def check_prefill(name: str, q: Tensor, k: Tensor, max_len: int | None) -> int:
    """The capacity to allocate: ``max_len``, or the prompt's length when None."""
    prompt = k.shape[-2]
    if q.shape[-2] != prompt:
        raise ValueError(f"{name}: prefill needs q_len == kv_len, got {q.shape[-2]} != {prompt}")
    if max_len is None:
        return prompt
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < prompt:
        raise ValueError(f"{name}: max_len={max_len!r} must be an int >= the prompt's {prompt}")
    return max_len


class DecodeForm:
    """Mixin of :class:`variants.base.AttentionVariant`: the decode interface and its defaults.

    A variant without a decode form keeps ``supports_decode = False``; its
    :meth:`decode_not_supported_reasons` says so (variants override it with why).
    """

    name: ClassVar[str]
    #: True when the variant implements prefill/step.
    supports_decode: ClassVar[bool] = False
    #: How ``forward`` handles ``kv_heads < heads``: "native" (shared keys never copied),
    #: "repeat" (k, v repeated to the query heads before the call) or "unsupported".
    gqa: ClassVar[str] = "repeat"
    #: Why a variant has no decode form (its ``unsupported`` rows' reason).
    no_decode_reason: ClassVar[str] = "no decode form (prefill/step) is implemented"

    def decode_not_supported_reasons(self, q: Tensor, k: Tensor, v: Tensor) -> list[str]:
        """Why prefill/step cannot run these inputs (``q (B, H, P, D)``, ``k``/``v (B, Hkv, P,
        *)``, the prompt); empty when they can. Prefill is the causal forward: its reasons."""
        if not self.supports_decode:
            return [f"{self.name}: {self.no_decode_reason}"]
        return self.not_supported_reasons(q, k, v, True)  # type: ignore[attr-defined]

    def prefill(
        self, q: Tensor, k: Tensor, v: Tensor, max_len: int | None = None
    ) -> tuple[Tensor, DecodeState]:
        """Causal forward over the prompt and the state it leaves.

        Args:
            q: ``(B, H, P, D)`` prompt queries.
            k: ``(B, Hkv, P, D)`` prompt keys (``Hkv`` divides ``H``).
            v: ``(B, Hkv, P, Dv)`` prompt values.
            max_len: Total tokens the state is allocated for (prompt and steps); None: the
                prompt's length (a growing state then grows by doubling).

        Returns:
            ``(B, H, P, Dv)`` outputs and the state.
        """
        raise DecodeUnsupportedError(self._no_decode())

    def step(
        self, q: Tensor, k: Tensor, v: Tensor, state: DecodeState
    ) -> tuple[Tensor, DecodeState]:
        """``T`` new tokens (``1 <= T <= 4``, causal among themselves) against ``state``.

        ``q (B, H, T, D)``, ``k``/``v (B, Hkv, T, *)`` -> ``(B, H, T, Dv)`` and the state
        (updated in place where it can be).
        """
        raise DecodeUnsupportedError(self._no_decode())

    def state_bytes(
        self,
        batch: int,
        kv_heads: int,
        context_len: int,
        head_dim: int,
        element_size: int = 4,
        heads: int | None = None,
    ) -> int:
        """Analytic bytes of the state holding ``context_len`` tokens (prefill's allocation
        with ``max_len = context_len``); ``heads`` (query heads, default ``kv_heads``) for
        states kept per query head."""
        raise DecodeUnsupportedError(self._no_decode())

    def step_read_bytes(
        self,
        batch: int,
        heads: int,
        kv_heads: int,
        context_len: int,
        head_dim: int,
        q_tokens: int = 1,
        element_size: int = 4,
    ) -> int:
        """Bytes one step of ``q_tokens`` must read at ``context_len`` (its memory floor)."""
        raise DecodeUnsupportedError(self._no_decode())

    def _no_decode(self) -> str:
        return f"{self.name}: {self.no_decode_reason}"
