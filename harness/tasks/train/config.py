"""The ``train`` config block (its defaults live here only)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from harness.measure.config import ConfigError, check_integer, check_number, check_positive

#: The training tasks a ``train.task`` may name.
TASKS = ("mqar", "chars")


@dataclasses.dataclass
class MqarConfig:
    """Multi-query associative recall (Zoology's generator).

    Args:
        vocab: Token vocabulary (even, >= 4: keys are its lower half, values its upper half).
        num_pairs: Key-value pairs per sequence (at most ``vocab / 2 - 1``).
        num_queries: Queries per sequence (at most ``num_pairs``); None = every key once.
        power_a: Power law of the key-to-query gaps, in (0, 1]; 1.0 = uniform.
        eval_examples: The fixed evaluation set, the same for every point.
        eval_seed: Seed of that set.
    """

    vocab: int = 256
    num_pairs: int = 4
    num_queries: int | None = None
    power_a: float = 0.01
    eval_examples: int = 512
    eval_seed: int = 12345

    def __post_init__(self) -> None:
        check_integer("train.mqar.vocab", self.vocab, 4)
        if self.vocab % 2:
            raise ConfigError(
                f"train.mqar.vocab={self.vocab} must be even (keys and values split it)"
            )
        keys = self.vocab // 2 - 1
        check_integer("train.mqar.num_pairs", self.num_pairs, 1, keys)
        if self.num_queries is not None:
            check_integer("train.mqar.num_queries", self.num_queries, 1, self.num_pairs)
        check_number("train.mqar.power_a", self.power_a, 0, 1, low_open=True)
        check_integer("train.mqar.eval_examples", self.eval_examples, 1)
        check_integer("train.mqar.eval_seed", self.eval_seed, 0)


@dataclasses.dataclass
class CharsConfig:
    """Character-level language modelling of Python's bundled documentation.

    Args:
        eval_chars: Validation characters scored (evenly spaced windows).
    """

    eval_chars: int = 32768

    def __post_init__(self) -> None:
        check_integer("train.chars.eval_chars", self.eval_chars, 1)


@dataclasses.dataclass
class TrainConfig:
    """Settings of a training point (conf/experiment/train.yaml is the preset).

    Args:
        task: mqar | chars (set by the ``train_setting`` group).
        lr: Peak learning rate.
        steps: The cap: the largest number of optimizer steps, where the cosine ends.
        batch: Sequences per step.
        eval_every: Steps between evaluations (the learning curve's resolution).
        target: MQAR: stop at this eval accuracy (None: never); chars ignores it.
        plateau_delta: Convergence: stop once the best evaluation of the last
            ``plateau_window`` of the curve beats the best before it by less than this (accuracy
            points or bits per char); None: no plateau stop (the presets set it).
        plateau_window: That last part, as a fraction of the steps run, in (0, 1).
        min_steps: No plateau stop before this step (a curve may sit on a plateau before it
            learns); at most ``steps``.
        warmup: Linear warm-up steps, then cosine decay to ``min_lr_ratio * lr``.
        min_lr_ratio: Final learning rate as a fraction of the peak.
        weight_decay: AdamW weight decay (matrices only).
        grad_clip: Gradient norm clip (0: none).
        layers: Transformer blocks.
        mlp_ratio: MLP hidden width / model width; 0 = attention-only blocks.
        short_conv: Kernel size of a causal depthwise convolution (and SiLU) on the q, k and v
            projections of every block, as the layers of flash-linear-attention and Zoology have
            before a linear-recurrent operator; 0 = none (the same model for every arm either way).
        mqar: The MQAR task's settings (a mapping is turned into :class:`MqarConfig`).
        chars: The chars task's settings (a mapping is turned into :class:`CharsConfig`).
    """

    task: str = "mqar"
    lr: float = 3e-3
    steps: int = 1000
    batch: int = 64
    eval_every: int = 50
    target: float | None = 0.99
    plateau_delta: float | None = None
    plateau_window: float = 0.3
    min_steps: int = 0
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    layers: int = 2
    mlp_ratio: int = 0
    short_conv: int = 0
    mqar: MqarConfig = dataclasses.field(default_factory=MqarConfig)
    chars: CharsConfig = dataclasses.field(default_factory=CharsConfig)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"train.task={self.task!r} is not one of {', '.join(TASKS)}")
        check_positive("train.lr", self.lr)
        lows = {"steps": 1, "batch": 1, "eval_every": 1, "warmup": 0, "layers": 1, "mlp_ratio": 0}
        lows["short_conv"] = 0
        for field, low in lows.items():
            check_integer(f"train.{field}", getattr(self, field), low)
        check_integer("train.min_steps", self.min_steps, 0, self.steps)
        window = self.plateau_window
        check_number("train.plateau_window", window, 0, 1, low_open=True, high_open=True)
        if self.plateau_delta is not None:
            check_number("train.plateau_delta", self.plateau_delta, 0)
        for field in ("min_lr_ratio", "weight_decay", "grad_clip"):
            check_number(f"train.{field}", getattr(self, field), 0)
        if self.target is not None:
            check_number("train.target", self.target, 0)
        if isinstance(self.mqar, Mapping):
            self.mqar = MqarConfig(**self.mqar)
        if isinstance(self.chars, Mapping):
            self.chars = CharsConfig(**self.chars)
