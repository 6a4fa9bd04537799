"""One variant instance per MiniLM layer, and its file: a fitted transfer.

:class:`LayerwiseAttention` holds one instance per layer and runs the one of the layer the model
is in, told by forward pre-hooks on the layers' attention modules (:meth:`~LayerwiseAttention.
attached`). It goes through the ordinary single-variant adapter
(:func:`harness.minilm.adapter.use_variant`), so padding, masks and everything else behave as
for any variant (:func:`attached` in the cached model). :func:`save_fit` writes one to a
file, :func:`load_fit` reads it back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import variants
from harness.minilm.model import load_model
from variants.base import AttentionVariant


class LayerwiseAttention(AttentionVariant):
    """One variant instance per transformer layer, run by the layer the model is in.

    Use it inside :meth:`attached` (which installs the hooks that tell it the layer), with the
    ordinary adapter: ``with lw.attached(model): embed(texts, lw)``. It describes itself as its
    first layer does (name, class flags, ``config()``).

    Args:
        layers: One instance per layer, in layer order.
    """

    name = "layerwise"

    def __init__(self, layers: Sequence[AttentionVariant]) -> None:
        super().__init__()
        if not layers:
            raise ValueError("LayerwiseAttention: no layers")
        self.layers = torch.nn.ModuleList(layers)
        first = layers[0]
        self.name = first.name
        for flag in ("exact", "supports_causal", "supports_cross", "randomized", "knob"):
            setattr(self, flag, getattr(first, flag))
        self.trained = all(layer.trained for layer in layers)
        self.current: int | None = None

    def _layer(self) -> AttentionVariant:
        if self.current is None:
            raise RuntimeError(
                f"{self.name}: per-layer attention runs inside LayerwiseAttention.attached(model)"
            )
        return self.layers[self.current]

    def forward(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
        return self._layer()(q, k, v, causal=causal)

    def not_supported_reasons(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> list[str]:
        layers = self.layers if self.current is None else [self._layer()]
        reasons: list[str] = []
        for layer in layers:
            reasons += [
                r for r in layer.not_supported_reasons(q, k, v, causal) if r not in reasons
            ]
        return reasons

    def flops(
        self, batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool
    ) -> int:
        return self.layers[0].flops(batch, heads, q_len, kv_len, head_dim, causal)

    def analytic_mem_bytes(self, *args: Any, **kwargs: Any) -> int:
        return self.layers[0].analytic_mem_bytes(*args, **kwargs)

    def config(self) -> dict[str, Any]:
        return self.layers[0].config()

    @contextlib.contextmanager
    def attached(self, model: Any) -> Iterator[LayerwiseAttention]:
        """Hooks on ``model``'s attention modules that select each layer's instance."""
        blocks = model.encoder.layer
        if len(blocks) != len(self.layers):
            raise ValueError(
                f"{self.name}: {len(self.layers)} fitted layers for a model of {len(blocks)}"
            )

        def enter(index: int) -> Any:
            def hook(_module: torch.nn.Module, _args: Any) -> None:
                self.current = index

            return hook

        handles = [
            block.attention.self.register_forward_pre_hook(enter(i))
            for i, block in enumerate(blocks)
        ]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self.current = None


def save_fit(path: str | Path, fitted: LayerwiseAttention, **meta: Any) -> Path:
    """Write the fitted layers (their ``state_dict``s), the variant's name and parameters and
    ``meta`` (loss curves, texts, ...) to ``path`` with ``torch.save``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "variant": fitted.name,
        "params": fitted.config(),
        "state_dicts": [layer.state_dict() for layer in fitted.layers],
        **meta,
    }
    torch.save(blob, path)
    return path


def load_fit(path: str | Path, device: str = "cpu") -> LayerwiseAttention:
    """The fitted per-layer variant saved by :func:`save_fit` (``trained`` set), on ``device``.

    The variant is rebuilt by name through the registry (built-ins and installed plugins) with
    the saved parameters, and each layer's ``state_dict`` loaded into its own instance.
    """
    blob = torch.load(Path(path), map_location=device, weights_only=True)
    layers = []
    for state in blob["state_dicts"]:
        layer = variants.create(blob["variant"], **blob["params"])
        layer.load_state_dict(state)
        layer.trained = True
        layers.append(layer.to(device).eval())
    return LayerwiseAttention(layers)


@contextlib.contextmanager
def attached(variant: AttentionVariant, device: str) -> Iterator[None]:
    """Inside it, a :class:`LayerwiseAttention` runs each layer's own instance in the cached
    model of ``device`` (:meth:`LayerwiseAttention.attached`); any other variant as it is."""
    if not isinstance(variant, LayerwiseAttention):
        yield
        return
    with variant.attached(load_model(device)):
        yield
