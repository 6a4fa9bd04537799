"""The ``train`` config block (its defaults live here only)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class MqarConfig:
    """Multi-query associative recall (Zoology's generator).

    Args:
        vocab: Token vocabulary.
        num_pairs: Key-value pairs per sequence.
        num_queries: Queries per sequence; None = every key once.
        power_a: Power law of the key-to-query gaps; 1.0 = uniform.
        eval_examples: The fixed evaluation set, the same for every point.
        eval_seed: Seed of that set.
    """

    vocab: int = 256
    num_pairs: int = 4
    num_queries: int | None = None
    power_a: float = 0.01
    eval_examples: int = 512
    eval_seed: int = 12345


@dataclasses.dataclass
class CharsConfig:
    """Character-level language modelling of Python's bundled documentation.

    Args:
        eval_chars: Validation characters scored (evenly spaced windows).
    """

    eval_chars: int = 32768


@dataclasses.dataclass
class TrainConfig:
    """Settings of a training point (conf/experiment/train.yaml is the preset).

    Args:
        task: mqar | chars (set by the ``train_setting`` group).
        lr: Peak learning rate.
        steps: Largest number of optimizer steps.
        batch: Sequences per step.
        eval_every: Steps between evaluations (the learning curve's resolution).
        target: MQAR: stop at this eval accuracy (None: never); chars ignores it.
        warmup: Linear warm-up steps, then cosine decay to ``min_lr_ratio * lr``.
        min_lr_ratio: Final learning rate as a fraction of the peak.
        weight_decay: AdamW weight decay (matrices only).
        grad_clip: Gradient norm clip.
        layers: Transformer blocks.
        mlp_ratio: MLP hidden width / model width; 0 = attention-only blocks.
    """

    task: str = "mqar"
    lr: float = 3e-3
    steps: int = 1000
    batch: int = 64
    eval_every: int = 50
    target: float | None = 0.99
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    layers: int = 2
    mlp_ratio: int = 0
    mqar: MqarConfig = dataclasses.field(default_factory=MqarConfig)
    chars: CharsConfig = dataclasses.field(default_factory=CharsConfig)
