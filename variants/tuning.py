"""Engine parameters chosen by measurement on the machine that runs, as Triton's autotuner does.

A parameter that changes a result only by rounding (a prefix-sum chunk, a streamed group, the
band kernel's row blocks) is a :class:`Knob`. A variant leaves it ``None`` ("auto") by default;
on first use at a shape class (:func:`shape_class`: device, dtype, causal, head sizes, power-of-two
buckets of the lengths and of batch x heads, torch threads, the engine's own facts) the tuner
times its candidates on the call's own inputs and keeps the fastest; the choice is cached per
machine (:mod:`variants.tuning_cache`). A value the user sets wins. ``ATTNBENCH_TUNING=off``
turns tuning off: every knob takes its default, cache or not (reproducible runs, the tests);
inside :func:`suspended` calls use the cached value or the default but never time anything.

Each knob is timed in the passes it affects (``fwd``: the forward under ``no_grad``;
``fwd_bwd``: forward and ``autograd.grad``), candidates interleaved over :data:`ROUNDS` rounds; a
candidate's time in a pass is its fastest round (on a shared machine the least disturbed one),
its score the product over the passes, and the default is kept unless a candidate beats it by
more than :data:`MARGIN`. Knobs are tuned in order, each with the ones before it at their
chosen values (which enter its key). Tune on an idle machine: the load average is stored with
each choice. Tuning never runs under a dispatch mode (``FlopCounterMode``) or while compiling; a
failure while tuning warns and leaves the default.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from variants.tuning_cache import TuningCache, entry_key, machine
from variants.validation import VariantConfigError

ENV_TUNING = "ATTNBENCH_TUNING"
#: The default is kept unless a candidate is this much faster (ratio of scores).
MARGIN = 0.03
#: Interleaved rounds per candidate.
ROUNDS = 3
#: Shortest timed block of calls, in seconds.
MIN_BLOCK_S = 0.002


@dataclass(frozen=True)
class Knob:
    """One tunable engine parameter: its name (the constructor's), default and candidates,
    and the passes whose time it changes."""

    name: str
    default: int
    candidates: tuple[int, ...]
    passes: tuple[str, ...] = ("fwd", "fwd_bwd")


def check_auto(owner: str, field: str, value: Any) -> int | None:
    """``None`` (auto: tuned) or an int >= 1, else :class:`VariantConfigError`."""
    ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
    if not ok:
        raise VariantConfigError(f"{owner}: {field}={value!r} must be an integer >= 1 or null")
    return value


def enabled() -> bool:
    """Whether tuning is on (``ATTNBENCH_TUNING`` unset, or not one of off, 0, false, no)."""
    return os.environ.get(ENV_TUNING, "on").strip().lower() not in ("0", "off", "false", "no")


_local = threading.local()


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """No tuning inside (cached values or defaults): for calls that must not tune."""
    before = getattr(_local, "suspended", False)
    _local.suspended = True
    try:
        yield
    finally:
        _local.suspended = before


def can_tune(x: Tensor) -> bool:
    """Whether a call on ``x`` may tune now: tuning on, not suspended, no dispatch mode, not
    compiling, a real device."""
    from torch.utils._python_dispatch import _len_torch_dispatch_stack

    return (
        enabled()
        and not getattr(_local, "suspended", False)
        and _len_torch_dispatch_stack() == 0
        and not torch.compiler.is_compiling()
        and x.device.type != "meta"
    )


def bucket(n: int) -> int:
    """The power of two at or above ``n``."""
    return 1 << max(0, int(n) - 1).bit_length()


def shape_class(q: Tensor, k: Tensor, v: Tensor, causal: bool, **extra: Any) -> dict[str, Any]:
    """The shape class of a call: what a tuned value is reused for."""
    return {
        "device": q.device.type,
        "dtype": str(q.dtype).replace("torch.", ""),
        "causal": bool(causal),
        "head_dim": q.shape[-1],
        "v_dim": v.shape[-1],
        "q_len": bucket(q.shape[-2]),
        "kv_len": bucket(k.shape[-2]),
        "batch_heads": bucket(math.prod(q.shape[:-2])),
        "threads": torch.get_num_threads(),
        **extra,
    }


class Probe:
    """A zero-argument call of one candidate configuration in one pass (what a timer times)."""

    def __init__(self, fn: Callable[[], Any], values: dict, pass_name: str, device=None) -> None:
        self.fn, self.values, self.pass_name = fn, dict(values), pass_name
        self.device = torch.device(device or "cpu")
        self.number: int | None = None  # calls per timed block (the default timer's)

    def __call__(self) -> Any:
        return self.fn()

    def warm(self) -> None:
        """One untimed call (allocator, lazily built masks); sizes the default timer's block."""
        _sync(self.device)
        start = time.perf_counter()
        self.fn()
        _sync(self.device)
        once = max(time.perf_counter() - start, 1e-7)
        self.number = max(1, min(1000, math.ceil(MIN_BLOCK_S / once)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def block_timer(probe: Probe) -> float:
    """Milliseconds per call of ``probe``: a block of calls of at least :data:`MIN_BLOCK_S`."""
    device = probe.device
    if probe.number is None:
        probe.warm()
    _sync(device)
    start = time.perf_counter()
    for _ in range(probe.number):
        probe()
    _sync(device)
    return (time.perf_counter() - start) / probe.number * 1e3


def pass_probes(run: Callable, q: Tensor, k: Tensor, v: Tensor, passes: tuple[str, ...]):
    """``make(values) -> {pass: fn}``: ``run(values, q, k, v)`` as a forward under ``no_grad``
    and, where asked, forward and ``autograd.grad`` on leaf copies of the inputs (made on the
    first ``make``: nothing is copied when every knob is read from the cache)."""
    made: list = []

    def backward_inputs() -> tuple[list[Tensor], Tensor]:
        if not made:
            with torch.inference_mode(False):
                leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
                gen = torch.Generator(device=q.device).manual_seed(0)
                shape = (*q.shape[:-1], v.shape[-1])
                grad = torch.randn(shape, generator=gen, device=q.device).to(q.dtype)
                made.append((leaves, grad))
        return made[0]

    def make(values: dict[str, int]) -> dict[str, Callable[[], Any]]:
        def fwd() -> Any:
            with torch.no_grad():
                return run(values, q, k, v)

        leaves, grad = backward_inputs() if "fwd_bwd" in passes else (None, None)

        def fwd_bwd() -> Any:
            with torch.inference_mode(False), torch.enable_grad():
                return torch.autograd.grad(run(values, *leaves), leaves, grad)

        return {"fwd": fwd, "fwd_bwd": fwd_bwd}

    return make


class Tuner:
    """Chooses knob values by timing (:func:`block_timer`, or a fake ``timer(probe) -> ms`` in
    tests), caches them, and counts its tuning runs (``runs``); ``fresh`` times every knob
    again instead of reading the cache (``attnbench-tune --retune``)."""

    def __init__(self, timer: Callable[[Probe], float] | None = None) -> None:
        self.timer = timer or block_timer
        self.cache = TuningCache()
        self.runs = 0
        self.rounds = ROUNDS
        self.fresh = False

    def resolve(
        self, engine: str, knobs: tuple[Knob, ...], user: dict[str, int | None],
        cls: dict[str, Any], make: Callable, passes: tuple[str, ...], allowed: bool,
    ) -> tuple[dict[str, int], dict[str, bool], bool]:  # fmt: skip
        """``(values, tuned, final)`` of ``knobs``: the user's, else the cached or tuned (when
        ``allowed``), else the default (every default with tuning off); ``final`` is False
        where a knob fell back to its default only because tuning was not allowed now."""
        values = {kn.name: user.get(kn.name) or kn.default for kn in knobs}
        tuned = {kn.name: False for kn in knobs}
        if not enabled():
            return values, tuned, True
        final = True
        for i, kn in enumerate(knobs):
            if user.get(kn.name) is not None:
                continue
            given = {
                other.name: values[other.name] if j < i or user.get(other.name) else "auto"
                for j, other in enumerate(knobs)
                if other is not kn
            }
            objective = tuple(p for p in kn.passes if p in passes)
            if not objective:
                continue
            key_cls = {**cls, "given": given, "passes": list(objective)}
            key = entry_key(machine(cls.get("device", "cpu")), engine, kn.name, key_cls)
            value = None if self.fresh else self.cache.get(key, kn.candidates)
            if value is None and allowed:
                value = self._tune(key, kn, values, make, objective, cls.get("device", "cpu"))
            if value is None:
                final = final and allowed
                continue
            values[kn.name], tuned[kn.name] = value, True
        return values, tuned, final

    def _tune(self, key, kn: Knob, values, make, objective, device) -> int | None:
        """Time ``kn``'s candidates (the other knobs at ``values``), cache and return the
        choice; None (with a warning) when timing failed."""
        self.runs += 1
        try:
            best_ms = self._best_ms(kn, values, make, objective, torch.device(device))
        except Exception as exc:  # a failed tuning must never fail the call
            message = f"attnbench tuning of {kn.name} failed ({exc}); default used"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            return None
        scores = {c: math.prod(m.values()) for c, m in best_ms.items()}
        best = min(scores, key=scores.__getitem__)
        if kn.default in scores and scores[kn.default] <= scores[best] * (1 + MARGIN):
            best = kn.default
        self.cache.put(key, best, kn.candidates, best_ms)
        return best

    def _best_ms(self, kn: Knob, values, make, objective, device) -> dict[int, dict]:
        """The fastest round's milliseconds per candidate and pass, candidates interleaved."""
        probes: dict[int, list[Probe]] = {}
        for c in kn.candidates:
            config = {**values, kn.name: c}
            fns = make(config)
            probes[c] = [Probe(fns[p], config, p, device) for p in objective]
            for probe in probes[c]:
                probe.warm()
        times: dict[int, dict[str, list[float]]] = {c: {p: [] for p in objective} for c in probes}
        for r in range(self.rounds):
            order = list(probes) if r % 2 == 0 else list(probes)[::-1]
            for c in order:
                for probe in probes[c]:
                    times[c][probe.pass_name].append(float(self.timer(probe)))
        return {c: {p: min(t) for p, t in ts.items()} for c, ts in times.items()}


#: The process's tuner (tests swap its ``timer``).
TUNER = Tuner()


class TunedEngine:
    """Mixin of a variant with knobs: resolution per shape class, ``tune`` and ``engine_config``.

    A subclass calls :meth:`engine_values` in its forward, with the knobs that apply to the
    call and ``run(values, q, k, v)`` (the engine with those values, for the tuner's probes).
    The cost models read :meth:`engine_value` (the values of the last call).
    """

    supports_backward: bool
    name: str

    def _tuning_state(self) -> dict[str, Any]:
        state = self.__dict__.get("_tuning")
        if state is None:
            state = self.__dict__["_tuning"] = {"memo": {}, "used": {}, "passes": None}
        return state

    def engine_values(
        self, knobs: tuple[Knob, ...], q: Tensor, k: Tensor, v: Tensor, causal: bool,
        run: Callable, extra: dict[str, Any] | None = None,
    ) -> dict[str, int]:  # fmt: skip
        """The values of ``knobs`` for this call (user, memo, cache, tuned, or default)."""
        state = self._tuning_state()
        user = {kn.name: getattr(self, kn.name, None) for kn in knobs}
        cls = shape_class(q, k, v, causal, **(extra or {}))
        passes = state["passes"] or (("fwd", "fwd_bwd") if self.supports_backward else ("fwd",))
        memo_key = (repr(sorted(cls.items())), tuple(user.items()), passes)
        found = state["memo"].get(memo_key)
        if found is None:
            allowed = can_tune(q)
            make = pass_probes(run, q, k, v, passes) if allowed else None
            values, tuned, final = TUNER.resolve(
                self.name, knobs, user, cls, make, passes, allowed
            )
            found = (values, tuned)
            if final:
                state["memo"][memo_key] = found
        state["used"] = {kn.name: (found[0][kn.name], found[1][kn.name]) for kn in knobs}
        return dict(found[0])

    def engine_value(self, knob: Knob) -> int:
        """The value of ``knob`` in the last call that used it; before one, the user's value
        or the default (what the cost models count)."""
        used = self._tuning_state()["used"].get(knob.name)
        if used is not None:
            return used[0]
        return getattr(self, knob.name, None) or knob.default

    def engine_config(self) -> dict[str, Any]:
        """The knobs the last call used: ``{"chunk_size": 64, "chunk_size_tuned": True}``."""
        out: dict[str, Any] = {}
        for name, (value, tuned) in self._tuning_state()["used"].items():
            out[name], out[f"{name}_tuned"] = value, tuned
        return out

    def tune(self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False, backward=True):
        """Choose (or read from the cache) the knobs for these inputs' shape class, untimed:
        one forward under ``no_grad``; ``backward=False`` times the forward only. Returns
        :meth:`engine_config`."""
        if not self.engine_tunable(q, k, v, causal):
            return {}
        state = self._tuning_state()
        state["passes"] = ("fwd", "fwd_bwd") if backward and self.supports_backward else ("fwd",)
        with torch.no_grad():
            self(q, k, v, causal)
        return self.engine_config()

    def engine_tunable(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> bool:
        """Whether a call with these inputs has knobs (default: yes)."""
        return True
