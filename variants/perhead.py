"""Trainable parameters with one row per head, built when the heads are known.

The number of heads is not part of the variant interface (a variant is built for ``kv_len`` and
``head_dim``), yet some variants own a parameter per head: the delta rule's write-strength
vector, retention's learnable decay. :class:`PerHeadParameters` builds them in the constructor
when ``heads`` is given, else at :meth:`~variants.base.AttentionVariant.build_parameters`
(which a model calls before its optimiser collects the parameters) or at the first forward;
later calls with other heads are refused (``not_supported_reasons``), and loading a saved
``state_dict`` into an unbuilt instance builds the parameters from the saved shapes.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import Tensor


class PerHeadParameters(abc.ABC):
    """Mixin of :class:`~variants.base.AttentionVariant`: per-head parameters built lazily.

    Subclasses name their parameters in ``per_head_names`` (registered as ``None`` until
    built) and implement :meth:`initial_parameters`.
    """

    name: str
    per_head_names: tuple[str, ...] = ()
    heads: int | None
    head_dim: int | None

    def _declare_per_head(self, heads: int | None, head_dim: int | None) -> None:
        """Register the parameters unbuilt, and build them when the shape is known."""
        for name in self.per_head_names:
            self.register_parameter(name, None)  # type: ignore[attr-defined]
        self.heads = heads
        if heads is not None and head_dim is not None:
            self._build(heads, head_dim, torch.device("cpu"))

    @abc.abstractmethod
    def initial_parameters(self, heads: int, head_dim: int) -> dict[str, Tensor]:
        """The parameters' initial values (float32), keyed by ``per_head_names``."""

    def _build(self, heads: int, head_dim: int, device: torch.device) -> None:
        for name, value in self.initial_parameters(heads, head_dim).items():
            setattr(self, name, torch.nn.Parameter(value.to(device)))
        self.heads, self.head_dim = heads, head_dim

    def built(self) -> bool:
        """Whether the per-head parameters exist."""
        return all(getattr(self, n) is not None for n in self.per_head_names)

    def build_parameters(self, heads: int, head_dim: int) -> None:
        """Build the parameters for ``heads`` and ``head_dim`` now (before an optimiser
        collects them); a no-op when built for that shape, ``ValueError`` for another."""
        if not self.built():
            self._build(heads, head_dim, torch.device("cpu"))
        problem = self.shape_mismatch(heads, head_dim)
        if problem:
            raise ValueError(problem)

    def shape_mismatch(self, heads: int, head_dim: int) -> str | None:
        """Why parameters built for another shape cannot serve ``heads`` x ``head_dim``."""
        if not self.built():
            return None
        want = self.initial_parameters(heads, head_dim)
        for name in self.per_head_names:
            have = tuple(getattr(self, name).shape)
            if have != tuple(want[name].shape):
                return (
                    f"{self.name}: parameters built for heads={self.heads}, "
                    f"head_dim={self.head_dim}; got heads={heads}, head_dim={head_dim}"
                )
        return None

    def per_head(self, x: Tensor) -> tuple[Tensor, ...]:
        """The parameters in ``x``'s dtype and device, for ``x (B, H, N, D)``'s heads (built
        on the first call when nothing built them)."""
        heads, head_dim = x.shape[1], x.shape[-1]
        if not self.built():
            self._build(heads, head_dim, x.device)
        problem = self.shape_mismatch(heads, head_dim)
        if problem:
            raise ValueError(problem)
        to = {"device": x.device, "dtype": x.dtype}
        return tuple(getattr(self, n).to(**to) for n in self.per_head_names)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Build the parameters from a saved fit's shapes first, so an unbuilt instance loads."""
        for name in self.per_head_names:
            saved = state_dict.get(prefix + name)
            if getattr(self, name) is None and saved is not None:
                setattr(self, name, torch.nn.Parameter(torch.zeros_like(saved)))
                self.heads = saved.shape[0]
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[misc]
