"""The user's setting: shape, dtype, device, mode and limits, validated before any work.

Every check raises :class:`~harness.measure.config.ConfigError` with one line naming the field
and its allowed values (``mode='serve' is not one of train, prefill, decode``), the suite's way
for config errors; the command turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from harness.analysis.rows import DTYPES
from harness.measure.config import ConfigError
from harness.measure.env import device_unavailable, resolve_device
from variants.base import check_choice, check_int

#: Mode -> the pass whose time and memory answer it (decode: the decode task's per-token step).
MODES: dict[str, str] = {"train": "fwd_bwd", "prefill": "fwd", "decode": "decode"}
#: What each mode times, in words.
MODE_WORDS = {
    "train": "forward + backward (a training step's attention)",
    "prefill": "forward (prefill / encoding)",
    "decode": "one decoding step of 1 token against the cached context",
}
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
#: Units of a memory cap (powers of 1000 and of 1024).
UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_memory(text: str | float | int | None) -> int | None:
    """``"2GiB"``, ``"512MB"``, ``"1e9"`` (bytes) as bytes; None stays None."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    try:
        value = float(match.group(1)) * UNITS[unit or "b"] if match else float("nan")
    except (KeyError, ValueError):
        value = float("nan")
    if not value > 0:
        raise ConfigError(
            f"max_memory={text!r} must be a size > 0 such as 512MiB or 2GB "
            "(units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        )
    return int(value)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One user's setting (``kv_len``, ``kv_heads``, ``device``, ``causal`` resolved by
    :func:`check`).

    Args:
        seq_len: Query length (decode: the context the step attends to).
        heads: Query heads.
        head_dim: Head dimension.
        kv_len: Key/value length (None: ``seq_len``); decode: the context.
        kv_heads: Key/value heads (grouped-query attention; None: ``heads``).
        batch: Batch size.
        dtype: One of :data:`harness.analysis.rows.DTYPES`.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        causal: Causal attention (decode: always).
        mode: ``train``, ``prefill`` or ``decode`` (:data:`MODES`).
        max_memory_bytes: Memory cap (peak memory of the pass; decode: the state).
        max_error: Largest relative error against exact attention for approximating variants.
        quality_tolerance: Trained-quality tolerance against exact attention (accuracy points or
            bits per char); None: trained quality is shown, not required.
        quality_task: The training task it refers to (``mqar``, ``chars``); None: any.
        threads: Torch threads (None: torch's default).
    """

    seq_len: int
    heads: int
    head_dim: int
    kv_len: int | None = None
    kv_heads: int | None = None
    batch: int = 1
    dtype: str = "float32"
    device: str = "auto"
    causal: bool | None = None
    mode: str = "prefill"
    max_memory_bytes: int | None = None
    max_error: float | None = None
    quality_tolerance: float | None = None
    quality_task: str | None = None
    threads: int | None = None

    @property
    def pass_name(self) -> str:
        """The rows' ``pass`` that answers the mode."""
        return MODES[self.mode]

    @property
    def task(self) -> str:
        """The suite's task that measures the mode."""
        return "decode" if self.mode == "decode" else "attention"

    def shape_text(self) -> str:
        """``B1 H8 q4096 kv4096 d64 float32 causal`` (decode: ``context 4096, 1 token``)."""
        grouped = f"/{self.kv_heads}" if self.kv_heads != self.heads else ""
        lengths = (
            f"context {self.kv_len}, 1 new token"
            if self.mode == "decode"
            else f"q{self.seq_len} kv{self.kv_len}"
        )
        causal = " causal" if self.causal else ""
        return (
            f"B{self.batch} H{self.heads}{grouped} {lengths} d{self.head_dim} {self.dtype}{causal}"
        )

    def overrides(self) -> list[str]:
        """The Hydra overrides of the shape (the variant and measurement settings apart)."""
        out = [
            f"seq_len={self.kv_len if self.mode == 'decode' else self.seq_len}",
            f"heads={self.heads}",
            f"head_dim={self.head_dim}",
            f"batch={self.batch}",
            f"dtype={self.dtype}",
            f"device={self.device}",
            f"causal={str(bool(self.causal)).lower()}",
        ]
        if self.mode != "decode" and self.kv_len != self.seq_len:
            out.append(f"kv_len={self.kv_len}")
        if self.kv_heads != self.heads:
            out.append(f"kv_heads={self.kv_heads}")
        return out


def _positive(field: str, value: float | None) -> None:
    if value is not None and not (isinstance(value, (int, float)) and value >= 0):
        raise ConfigError(f"{field}={value!r} must be a number >= 0 or unset")


def check(setting: Setting, train_config: type | None = None) -> Setting:
    """The setting validated and resolved (kv_len, kv_heads, device, causal); ConfigError
    naming the field otherwise, including a device this machine does not have.

    Args:
        setting: The setting as given.
        train_config: The train task's config class: ``quality_task`` is checked by building
            it (its own message names the allowed tasks).
    """
    s = setting
    check_choice(None, "mode", s.mode, tuple(MODES), error=ConfigError)
    for field in ("seq_len", "heads", "head_dim", "batch"):
        check_int(None, field, getattr(s, field), low=1, error=ConfigError)
    for field in ("kv_len", "kv_heads", "threads"):
        if getattr(s, field) is not None:
            check_int(None, field, getattr(s, field), low=1, error=ConfigError)
    kv_heads = s.heads if s.kv_heads is None else s.kv_heads
    if s.heads % kv_heads:
        raise ConfigError(f"kv_heads={kv_heads} must divide heads={s.heads}")
    check_choice(None, "dtype", s.dtype, DTYPES, error=ConfigError)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(s.device)):
        raise ConfigError(f"device={s.device!r} is not one of {', '.join(DEVICES)}")
    device = resolve_device(s.device)
    if missing := device_unavailable(device):
        raise ConfigError(missing)
    if s.mode == "decode" and s.causal is False:
        raise ConfigError("causal=false is not allowed with mode=decode: decoding is causal")
    _positive("max_error", s.max_error)
    _positive("quality_tolerance", s.quality_tolerance)
    if s.quality_task is not None and train_config is not None:
        try:
            train_config(task=s.quality_task)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("train.task", "quality_task", 1)) from exc
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    return dataclasses.replace(
        s,
        kv_len=s.seq_len if s.kv_len is None else s.kv_len,
        kv_heads=kv_heads,
        device=device,
        causal=True if s.mode == "decode" else bool(s.causal),
    )
