"""The tuner's cache: one JSON file of the engine parameters chosen on each machine.

The file is ``$ATTNBENCH_CACHE_DIR/tuning.json`` (default: ``tuning.json`` in
``$XDG_CACHE_HOME/attnbench``, else ``~/.cache/attnbench``)::

    {"format": 1, "entries": {KEY: {"value": 64, "candidates": [32, 64, 128],
                                    "times_ms": {"32": {"fwd": 1.9, "fwd_bwd": 5.1}, ...},
                                    "load": 0.4, "when": "2026-...Z"}}}

``KEY`` is the JSON text of the machine (:func:`machine`: CPU model, core count, torch version,
the ISA torch dispatches to, the GPU where there is one), the engine, the parameter and the
shape class. A file that is not JSON or not of this format, and an entry whose value is not one
of today's candidates (or whose candidates changed), are ignored with a :class:`TuningCacheWarning`
and tuned again; the file is rewritten atomically (merged with what other processes wrote).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import platform
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

FORMAT = 1
ENV_CACHE_DIR = "ATTNBENCH_CACHE_DIR"


class TuningCacheWarning(UserWarning):
    """A cache file or entry that cannot be used (ignored; the parameter is tuned again)."""


def cache_path() -> Path:
    """Where the cache lives now (the environment is read on every call)."""
    root = os.environ.get(ENV_CACHE_DIR)
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(base) / "attnbench")
    return Path(root) / "tuning.json"


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or ``platform``'s best guess)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def machine(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What a tuned value is valid for: CPU model, core count, torch, ISA (and GPU)."""
    out: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "isa": torch.backends.cpu.get_cpu_capability(),
    }
    if torch.device(device).type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def entry_key(machine_: dict, engine: str, param: str, shape_class: dict) -> str:
    """The entry's key: canonical JSON of everything the choice depends on."""
    return json.dumps(
        {"machine": machine_, "engine": engine, "param": param, "class": shape_class},
        sort_keys=True,
        separators=(",", ":"),
    )


def _warn(message: str) -> None:
    warnings.warn(message, TuningCacheWarning, stacklevel=3)


def _read(path: Path, quiet: bool = False) -> dict[str, Any]:
    """The file's entries; ``{}`` (with a warning unless ``quiet``) when missing or unusable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        if not quiet:
            _warn(f"attnbench tuning cache {path} is unreadable ({exc}); ignored")
        return {}
    ok = isinstance(data, dict) and data.get("format") == FORMAT
    if not ok or not isinstance(data.get("entries"), dict):
        if not quiet:
            _warn(f"attnbench tuning cache {path} is not of format {FORMAT}; ignored")
        return {}
    return data["entries"]


def usable(entry: Any, candidates: tuple[int, ...]) -> int | None:
    """The entry's value when it is a value of today's candidate list, else None."""
    if not isinstance(entry, dict):
        return None
    value = entry.get("value")
    if isinstance(value, bool) or not isinstance(value, int) or value not in candidates:
        return None
    if list(entry.get("candidates", [])) != list(candidates):
        return None
    return value


class TuningCache:
    """The entries of :func:`cache_path`, read once per path and written through."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._entries: dict[str, Any] = {}

    def _load(self) -> dict[str, Any]:
        path = cache_path()
        if path != self._path:
            self._path, self._entries = path, _read(path)
        return self._entries

    def get(self, key: str, candidates: tuple[int, ...]) -> int | None:
        """The cached value for ``key``; None when absent, or stale (with a warning)."""
        entries = self._load()
        if key not in entries:
            return None
        value = usable(entries[key], candidates)
        if value is None:
            _warn(
                f"attnbench tuning cache {self._path}: stale or malformed entry ignored "
                f"(candidates now {list(candidates)}): {entries[key]!r:.120}"
            )
            del entries[key]
        return value

    def put(self, key: str, value: int, candidates: tuple[int, ...], times: dict) -> None:
        """Store a choice in memory and in the file (merged with the file's current entries)."""
        entries = self._load()
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        entry = {
            "value": value,
            "candidates": list(candidates),
            "times_ms": {
                str(c): {p: round(t, 4) for p, t in per_pass.items()}
                for c, per_pass in times.items()
            },
            "load": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "when": when,
        }
        entries[key] = entry
        path = self._path
        assert path is not None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            merged = {**_read(path, quiet=True), key: entry}
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tuning.", suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                json.dump({"format": FORMAT, "entries": merged}, fh, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except OSError as exc:
            _warn(f"attnbench tuning cache {path} not written ({exc}); kept in memory")

    def clear(self) -> None:
        """Forget what was read (the next lookup reads the file again)."""
        self._path, self._entries = None, {}
