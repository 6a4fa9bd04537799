"""The training loop shared by every task: AdamW, warm-up then cosine, clipping, convergence.

One call of :func:`train` runs at most ``steps`` optimizer steps (the cap, where the cosine
ends) on fresh batches and evaluates every ``eval_every`` steps (and after the last step). It
stops at the first evaluation that reaches ``target`` (stop reason ``target``), or that finds the
curve flat (:func:`plateaued`: from ``min_steps`` on, the best evaluation of the last
``plateau_window`` of the steps run beats the best before it by less than ``plateau_delta``;
reason ``plateau``), else at the cap (reason ``cap``, unless the curve is flat there too). A
curve that has not left the task's trivial solution (``trivial``: MQAR's 1/pairs) is not stopped
as flat before the cap: arms on that plateau have left it late (steps 1100-1750 with a 2000-step
cap), so flat there is not evidence of convergence until the budget is spent. Target
and plateau count as converged; an arm stopped by the cap was still improving. The first
non-finite loss or evaluation stops it with status ``nan`` and the step. Each step is timed on
its own (device synchronised before and after, batch generation and evaluation excluded); the
median over the steps after the first :data:`WARM_STEPS` is the row's time per step. A progress
bar is shown on a terminal only.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from harness.measure.memory import peak_memory
from harness.measure.timing import synchronize
from harness.tasks.train.model import decay_groups

#: Steps left out of the time-per-step median (lazy initialisation, allocator warm-up).
WARM_STEPS = 3

#: A curve has left the trivial plateau once its best evaluation beats the trivial value by this
#: many ``plateau_delta`` (two: one delta is within the evaluation's own wobble on the plateau,
#: e.g. 0.245-0.257 around 0.25 for linear attention with 4 pairs).
TRIVIAL_MARGIN = 2.0

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class LoopConfig:
    """Optimisation settings (the same for every variant of a sweep).

    Args:
        steps: Largest number of optimizer steps.
        lr: Peak learning rate.
        warmup: Linear warm-up steps (from lr/warmup to lr).
        min_lr_ratio: The cosine decays from ``lr`` to ``lr * min_lr_ratio`` at ``steps``.
        weight_decay: AdamW weight decay of the weight matrices.
        grad_clip: Largest global gradient norm (0 turns clipping off).
        eval_every: Steps between evaluations.
        target: Stop once the evaluation reaches this value (None: never).
        higher_is_better: True for accuracy, False for bits per character.
        plateau_delta: Smallest gain of the last window that counts as improving (None: no
            plateau stop).
        plateau_window: The last part of the curve, as a fraction of the steps run.
        min_steps: No plateau stop before this step.
        trivial: The value of the task's trivial solution (MQAR: 1/pairs, any value from the
            context), or None. While the best evaluation so far is within
            ``TRIVIAL_MARGIN * plateau_delta`` of it, the curve counts as still on the trivial
            plateau and only the cap stops it.
    """

    steps: int
    lr: float
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 50
    target: float | None = None
    higher_is_better: bool = True
    plateau_delta: float | None = None
    plateau_window: float = 0.3
    min_steps: int = 0
    trivial: float | None = None

    @property
    def trivial_margin(self) -> float | None:
        """How far the best evaluation must beat ``trivial`` to have left its plateau (None
        without a trivial level or a plateau rule)."""
        if self.trivial is None or self.plateau_delta is None:
            return None
        return TRIVIAL_MARGIN * self.plateau_delta

    def reached(self, value: float, goal: float) -> bool:
        """Whether ``value`` is at least as good as ``goal``."""
        return value >= goal if self.higher_is_better else value <= goal


def lr_at(step: int, cfg: LoopConfig) -> float:
    """Learning rate of step ``step`` (1-based): linear warm-up, then cosine to the floor."""
    if step <= cfg.warmup:
        return cfg.lr * step / max(1, cfg.warmup)
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def plateaued(curve: list[list[float]], cfg: LoopConfig) -> bool:
    """Whether the curve (``[step, value]`` pairs, step 0 first) has stopped improving.

    At the last evaluation's step ``s >= min_steps``: the window is the evaluations after
    ``s * (1 - plateau_window)``; the curve is flat when the best value inside it beats the best
    value before it by less than ``plateau_delta`` (at least two evaluations on each side).
    Before the cap, a curve still on the trivial plateau (:func:`on_trivial_plateau`) is not
    flat but waiting: it runs on.
    """
    if cfg.plateau_delta is None or not curve:
        return False
    step = curve[-1][0]
    if step < cfg.min_steps:
        return False
    if step < cfg.steps and on_trivial_plateau(curve, cfg):
        return False
    start = step * (1.0 - cfg.plateau_window)
    before = [v for s, v in curve if s <= start]
    inside = [v for s, v in curve if s > start]
    if len(before) < 2 or len(inside) < 2:
        return False
    if cfg.higher_is_better:
        gain = max(inside) - max(before)
    else:
        gain = min(before) - min(inside)
    return gain < cfg.plateau_delta


def on_trivial_plateau(curve: list[list[float]], cfg: LoopConfig) -> bool:
    """Whether no evaluation after step 0 has beaten ``cfg.trivial`` by the margin yet."""
    margin = cfg.trivial_margin
    if margin is None:
        return False
    values = [v for s, v in curve if s > 0 and math.isfinite(v)]
    if not values:
        return True
    if cfg.higher_is_better:
        return max(values) < cfg.trivial + margin
    return min(values) > cfg.trivial - margin


@dataclass
class TrainResult:
    """What one training run produced.

    Attributes:
        status: ``ok`` or ``nan``.
        stop_reason: ``target``, ``plateau``, ``cap`` or ``nan``.
        steps_run: Optimizer steps taken (the NaN step included).
        nan_step: The step whose loss or evaluation was not finite, else None.
        curve: ``[step, eval value]`` before training (step 0) and after every evaluation.
        step_times_s: Wall time of each step.
        last_loss: Training loss of the last finite step.
        optimizer: The optimizer (for the memory measurement after training).
    """

    status: str = "ok"
    stop_reason: str = "cap"
    steps_run: int = 0
    nan_step: int | None = None
    curve: list[list[float]] = field(default_factory=list)
    step_times_s: list[float] = field(default_factory=list)
    last_loss: float | None = None
    optimizer: Any = None

    @property
    def converged(self) -> bool:
        """Stopped by the target or a flat curve (not still improving at the cap)."""
        return self.stop_reason in ("target", "plateau")

    def time_per_step_ms(self) -> tuple[float | None, float | None]:
        """Median and interquartile range (ms) of the step times after the warm-up steps."""
        times = self.step_times_s[WARM_STEPS:] or self.step_times_s
        if not times:
            return None, None
        quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        return statistics.median(times) * 1e3, (quartiles[2] - quartiles[0]) * 1e3


def make_optimizer(model: torch.nn.Module, cfg: LoopConfig) -> torch.optim.AdamW:
    """AdamW with decay on the matrices only and betas (0.9, 0.95), as nanoGPT."""
    return torch.optim.AdamW(decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    loss_of: Callable[[torch.nn.Module, Batch], Tensor],
    grad_clip: float,
) -> Tensor:
    """One step: forward, backward, clip, update. Returns the loss (detached)."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_of(model, batch)
    if not bool(torch.isfinite(loss)):
        return loss.detach()  # no update from a diverged loss
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.detach()


def _progress(total: int, label: str):
    """A tqdm bar on a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=label, leave=False, dynamic_ncols=True)


def train(
    model: torch.nn.Module,
    next_batch: Callable[[int], Batch],
    loss_of: Callable[[torch.nn.Module, Batch], Tensor],
    evaluate: Callable[[torch.nn.Module], float],
    cfg: LoopConfig,
    device: str = "cpu",
    label: str = "train",
) -> TrainResult:
    """Train ``model`` in place.

    Args:
        model: The model (already on ``device``).
        next_batch: ``next_batch(step)`` -> ``(inputs, targets)`` on ``device``; fresh data.
        loss_of: ``loss_of(model, batch)`` -> scalar loss.
        evaluate: ``evaluate(model)`` -> the evaluation value (called under ``no_grad``).
        cfg: Optimisation settings.
        device: Device to synchronise when timing steps.
        label: Progress bar label.
    """
    result = TrainResult(optimizer=make_optimizer(model, cfg))
    bar = _progress(cfg.steps, label)
    result.curve.append([0, run_eval(model, evaluate)])  # the untrained baseline
    model.train()
    try:
        for step in range(1, cfg.steps + 1):
            for group in result.optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            batch = next_batch(step)
            synchronize(device)
            start = time.perf_counter()
            loss = optimizer_step(model, result.optimizer, batch, loss_of, cfg.grad_clip)
            synchronize(device)
            result.step_times_s.append(time.perf_counter() - start)
            result.steps_run = step
            value = float(loss)
            if not math.isfinite(value):
                result.status, result.nan_step, result.stop_reason = "nan", step, "nan"
                break
            result.last_loss = value
            if bar is not None:
                bar.update(1)
            if step % cfg.eval_every and step != cfg.steps:
                continue
            score = run_eval(model, evaluate)
            result.curve.append([step, score])
            if not math.isfinite(score):
                result.status, result.nan_step, result.stop_reason = "nan", step, "nan"
                break
            if bar is not None:
                bar.set_postfix(loss=f"{value:.3f}", eval=f"{score:.4g}")
            if cfg.target is not None and cfg.reached(score, cfg.target):
                result.stop_reason = "target"
                break
            if plateaued(result.curve, cfg):
                result.stop_reason = "plateau"
                break
    finally:
        if bar is not None:
            bar.close()
    return result


def run_eval(model: torch.nn.Module, evaluate: Callable[[torch.nn.Module], float]) -> float:
    """``evaluate(model)`` in eval mode without gradients; the model is left in train mode."""
    model.eval()
    try:
        with torch.no_grad():
            return float(evaluate(model))
    finally:
        model.train()


def step_peak_memory(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    loss_of: Callable[[torch.nn.Module, Batch], Tensor],
    device: str,
    grad_clip: float = 1.0,
) -> dict[str, Any]:
    """Peak memory of one whole training step (harness.measure.memory), model unchanged.

    Run after training: the learning rate is set to 0 for the step, so AdamW neither moves nor
    decays the weights, while the step allocates what any step does (activations, gradients,
    the optimizer's temporaries).
    """
    saved = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    try:
        return peak_memory(
            lambda: optimizer_step(model, optimizer, batch, loss_of, grad_clip), device
        )
    finally:
        for group, lr in zip(optimizer.param_groups, saved):
            group["lr"] = lr
