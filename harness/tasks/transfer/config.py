"""The ``transfer`` config block (its defaults live here only)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from harness.measure.config import ConfigError, check_integer, check_number, check_positive

#: What a fit can minimise (``harness.tasks.transfer.fit`` implements them).
LOSSES = ("attention", "output")

#: Integer fields and their smallest value.
_INTS = {"calibration_texts": 1, "eval_texts": 1, "retrieval_pairs": 0, "calibration_every": 2,
         "steps": 1, "batch_size": 1, "eval_batch_size": 1}  # fmt: skip


def _learnable() -> dict[str, dict[str, Any]]:
    return {"linformer": {"init": "learned"}, "performer": {"learnable_projection": True}}


@dataclasses.dataclass
class TransferConfig:
    """Settings of a transfer point (conf/experiment/transfer.yaml is the preset).

    Every text is the point's ``kv_len`` tokens long ([CLS] and [SEP] included, at most 512).

    Args:
        calibration_texts: Passages of the calibration topics the layers are fitted on.
        eval_texts: Held-out passages (embedding cosine, hidden-state and layer errors).
        retrieval_pairs: Held-out retrieval pairs; 0 turns the check off.
        calibration_every: Every n-th pydoc topic (sorted) calibrates, the rest evaluate.
        steps: Optimiser steps per layer.
        batch_size: Calibration texts per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (pulls parameters to 0, not to their init).
        loss: What each layer's fit minimises: ``attention`` (the Hedgehog paper's
            cross-entropy from the softmax attention weights to the variant's, for variants
            with ``attention_weights``; the others get the output loss) or ``output`` (the
            attention output's relative squared error). The rows' ``fit_loss`` says which ran.
        eval_batch_size: Texts per forward pass when measuring.
        save: Write transfer_<variant>_<knob>.pt beside the rows.
        learnable: Constructor settings that give a variant trainable parameters, per variant.
    """

    calibration_texts: int = 32
    eval_texts: int = 16
    retrieval_pairs: int = 200
    calibration_every: int = 3
    steps: int = 200
    batch_size: int = 8
    lr: float = 0.01
    weight_decay: float = 0.0
    loss: str = "attention"
    eval_batch_size: int = 16
    save: bool = True
    learnable: dict[str, Any] = dataclasses.field(default_factory=_learnable)

    def __post_init__(self) -> None:
        for field, low in _INTS.items():
            check_integer(f"transfer.{field}", getattr(self, field), low)
        check_positive("transfer.lr", self.lr)
        check_number("transfer.weight_decay", self.weight_decay, 0)
        if self.loss not in LOSSES:
            raise ConfigError(f"transfer.loss={self.loss!r} must be one of {', '.join(LOSSES)}")
        if not isinstance(self.save, bool):
            raise ConfigError(f"transfer.save={self.save!r} must be true or false")
        if not isinstance(self.learnable, Mapping) or not all(
            isinstance(v, Mapping) for v in self.learnable.values()
        ):
            raise ConfigError(
                f"transfer.learnable={self.learnable!r} must map variant names to constructor "
                "settings"
            )
