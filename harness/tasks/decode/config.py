"""The ``decode`` config block (its defaults live here only).

The context a step attends to is the point's ``kv_len`` (``seq_len`` unless ``kv_len`` is set):
the prompt that is prefilled before the timed steps. This block sets what happens after it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from harness.measure.config import ConfigError, check_integer

#: Most query tokens one step takes (speculative or multi-token decoding; the variants' limit).
MAX_Q_TOKENS = 4


@dataclasses.dataclass
class DecodeConfig:
    """Settings of a decode point (conf/experiment/decode.yaml is the preset).

    Args:
        q_tokens: Query tokens per step, 1..4 (1: plain generation).
        steps: Steps timed (median and IQR over them).
        warmup: Untimed steps before them.
        cache_len: Tokens the state is allocated for (the KV cache's preallocated length):
            at least the prompt (``kv_len``) plus every generated token
            (``(warmup + steps) * q_tokens``); None = exactly that.
        model_depth: Layers of the model-level measurement (a stack of
            ``variants.MultiHeadAttention`` blocks with random weights); 0 = none.
        model_width: The model's width; None = ``heads * head_dim``. Another width gives the
            model heads of ``model_width / heads`` dimensions.
        model_mlp_ratio: The blocks' MLP hidden width / model width; 0 = attention-only.
    """

    q_tokens: int = 1
    steps: int = 32
    warmup: int = 4
    cache_len: int | None = None
    model_depth: int = 2
    model_width: int | None = None
    model_mlp_ratio: int = 4

    def __post_init__(self) -> None:
        check_integer("decode.q_tokens", self.q_tokens, 1, MAX_Q_TOKENS)
        check_integer("decode.steps", self.steps, 1)
        check_integer("decode.warmup", self.warmup, 0)
        if self.cache_len is not None:
            check_integer("decode.cache_len", self.cache_len, 1)
        check_integer("decode.model_depth", self.model_depth, 0)
        if self.model_width is not None:
            check_integer("decode.model_width", self.model_width, 1)
        check_integer("decode.model_mlp_ratio", self.model_mlp_ratio, 0)

    @property
    def generated(self) -> int:
        """Tokens the steps add to the state (warm-up and timed)."""
        return (self.warmup + self.steps) * self.q_tokens

    def cache_for(self, prompt: int) -> int:
        """The state's allocated length for a prompt of ``prompt`` tokens."""
        return prompt + self.generated if self.cache_len is None else self.cache_len

    def check_point(self, point: Any) -> None:
        """Checks against the whole point (run by ``Point.from_cfg``, before any work)."""
        need = point.kv_len + self.generated
        if self.cache_len is not None and self.cache_len < need:
            raise ConfigError(
                f"decode.cache_len={self.cache_len} is shorter than the prompt (kv_len="
                f"{point.kv_len}) plus the {self.generated} generated tokens ({need})"
            )
        width = self.model_width
        if self.model_depth and width is not None and width % point.heads:
            raise ConfigError(
                f"decode.model_width={width} must be a multiple of heads={point.heads}"
            )
