"""The training data tasks bound to one point: fresh batches, the loss, the evaluation.

:func:`make_task` builds :class:`MQARTask` (accuracy on the query positions) or
:class:`CharsTask` (validation bits per character) from the ``train`` block; both give
``next_batch(step)``, ``loss_of(model, batch)``, ``evaluate(model)`` and
``unsupported_reasons(variant, heads, head_dim)`` to the loop and the measurement.
"""

from __future__ import annotations

import abc
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.tasks.train import data_chars, data_mqar
from harness.tasks.train.config import TrainConfig
from variants.base import AttentionVariant

Batch = tuple[Tensor, Tensor]


class _Task(abc.ABC):
    """What both tasks share: the batch stream, the fixed evaluation set, the capability check.

    Subclasses set ``name``, ``metric``, ``vocab``, ``params``, ``chance`` and the evaluation
    tensors, and implement ``_draw``, ``loss_of`` and ``_score``.
    """

    name = "task"
    metric = "metric"
    plateau: float | None = None  # a trivial solution's value, where the task has one

    def __init__(self, batch: int, seq_len: int, causal: bool, seed: int, device: str) -> None:
        self.batch, self.seq_len, self.causal, self.device = batch, seq_len, causal, device
        self.gen = torch.Generator().manual_seed(seed)  # the training stream: fresh every step
        self.eval_inputs = self.eval_targets = torch.empty(0)

    def next_batch(self, step: int) -> Batch:
        """A fresh ``(inputs, targets)`` batch on the task's device."""
        inputs, targets = self._draw()
        return inputs.to(self.device), targets.to(self.device)

    def evaluate(self, model: torch.nn.Module, chunk: int = 128) -> float:
        """The metric over the whole fixed evaluation set, in chunks of ``chunk`` examples."""
        total, count = 0.0, 0
        for start in range(0, self.eval_inputs.shape[0], chunk):
            inputs = self.eval_inputs[start : start + chunk].to(self.device)
            targets = self.eval_targets[start : start + chunk].to(self.device)
            part, n = self._score(model, inputs, targets)
            total, count = total + part, count + n
        return self._finish(total, count)

    def unsupported_reasons(
        self, variant: AttentionVariant, heads: int, head_dim: int
    ) -> list[str]:
        """Reasons the variant cannot be trained on this task (probed on the task's shape)."""
        probe = torch.zeros(1, heads, self.seq_len, head_dim, device=self.device)
        reasons = list(variant.not_supported_reasons(probe, probe, probe, self.causal))
        if not getattr(variant, "supports_backward", True):
            reasons.append(f"{variant.name}: no backward pass, so it cannot be trained")
        return reasons

    @abc.abstractmethod
    def _draw(self) -> Batch:
        """A fresh training batch."""

    @abc.abstractmethod
    def loss_of(self, model: torch.nn.Module, batch: Batch) -> Tensor:
        """The training loss of ``model`` on ``batch``."""

    @abc.abstractmethod
    def _score(self, model: torch.nn.Module, inputs: Tensor, targets: Tensor):
        """(summed score, count) of ``model`` on an evaluation chunk."""

    @abc.abstractmethod
    def _finish(self, total: float, count: int) -> float:
        """The evaluation value from the summed score and count."""


class MQARTask(_Task):
    """MQAR (:mod:`harness.tasks.train.data_mqar`); the form follows ``causal``."""

    name, metric = "mqar", "accuracy"

    def __init__(self, cfg: TrainConfig, seq_len, causal, seed, device) -> None:
        super().__init__(cfg.batch, seq_len, causal, seed, device)
        p = cfg.mqar
        form = "causal" if causal else "bidirectional"
        self.setting = data_mqar.MQARConfig(
            p.vocab, seq_len, p.num_pairs, p.num_queries, p.power_a, form
        )
        self.vocab = p.vocab
        self.params = {**dataclasses.asdict(p), "seq_len": seq_len, "form": form}
        self.chance = data_mqar.chance_accuracy(self.setting)
        self.plateau = data_mqar.plateau_accuracy(self.setting)
        evaluation = data_mqar.mqar_eval_set(self.setting, p.eval_examples, p.eval_seed)
        self.eval_inputs, self.eval_targets = evaluation

    def _draw(self) -> Batch:
        return data_mqar.mqar_batch(self.setting, self.batch, self.gen)

    def loss_of(self, model: torch.nn.Module, batch: Batch) -> Tensor:
        inputs, targets = batch
        where = targets != data_mqar.IGNORE  # logits at the query positions only
        return F.cross_entropy(model(inputs, self.causal, where), targets[where])

    def _score(self, model, inputs, targets):
        where = targets != data_mqar.IGNORE
        correct = model(inputs, self.causal, where).argmax(-1) == targets[where]
        return float(correct.sum()), int(where.sum())

    def _finish(self, total: float, count: int) -> float:
        return total / count


class CharsTask(_Task):
    """Character-level language modelling (:mod:`harness.tasks.train.data_chars`), causal only."""

    name, metric = "chars", "bpc"

    def __init__(self, cfg: TrainConfig, seq_len, causal, seed, device) -> None:
        super().__init__(cfg.batch, seq_len, causal, seed, device)
        corpus = data_chars.load_corpus()
        self.train_ids, valid_ids = data_chars.encoded_corpus()
        self.vocab, self.chance = corpus.vocab, math.log2(corpus.vocab)
        self.params = {
            **dataclasses.asdict(cfg.chars),
            "seq_len": seq_len,
            "vocab": corpus.vocab,
            "train_chars": len(corpus.train_text),
            "valid_chars": len(corpus.valid_text),
        }
        windows = data_chars.eval_windows(valid_ids, seq_len, cfg.chars.eval_chars)
        self.eval_inputs, self.eval_targets = windows

    def unsupported_reasons(self, variant, heads, head_dim) -> list[str]:
        reasons = super().unsupported_reasons(variant, heads, head_dim)
        if not self.causal:
            reasons.append("chars: character-level language modelling is causal; causal=true")
        return reasons

    def _draw(self) -> Batch:
        return data_chars.char_batch(self.train_ids, self.seq_len, self.batch, self.gen)

    def loss_of(self, model: torch.nn.Module, batch: Batch) -> Tensor:
        inputs, targets = batch
        return F.cross_entropy(model(inputs, True).flatten(0, 1), targets.flatten())

    def _score(self, model, inputs, targets):
        logits = model(inputs, True).flatten(0, 1)  # (W * N, vocab)
        return float(F.cross_entropy(logits, targets.flatten(), reduction="sum")), targets.numel()

    def _finish(self, total: float, count: int) -> float:
        return data_chars.bits_per_char(total, count)


def make_task(
    cfg: TrainConfig, seq_len: int, causal: bool, seed: int, device: str
) -> MQARTask | CharsTask:
    """The data task named by ``cfg.task`` for this point."""
    cls = {"mqar": MQARTask, "chars": CharsTask}[cfg.task]
    return cls(cfg, seq_len, causal, seed, device)
