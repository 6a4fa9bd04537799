"""The machine a speed table was measured on, and the engine knobs its variants ran with.

The header names what moves the ratios between CPUs (docs/performance.md): the CPU model and
core count, the vector ISA it offers (``/proc/cpuinfo`` flags) and the one torch dispatches to,
the cache sizes (``/sys/devices/system/cpu/cpu0/cache``, else ``lscpu``); the copy bandwidth is
probed by :func:`harness.measure.env.copy_bandwidth_gbs`. :func:`tuned_section` lists the tuned
configuration beside the table.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import torch

from harness.measure import env
from harness.measure.speedcheck.table import Table
from variants import tuning
from variants.tuning_cache import cache_path

#: The ISA flags worth naming, in this order, when the CPU has them.
ISA_FLAGS = (
    "amx_tile", "amx_bf16", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "avx2",
    "avx_vnni", "fma", "sve", "asimd",
)  # fmt: skip


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``flags`` on x86, ``Features`` on ARM); empty if unknown."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.lower().startswith(("flags", "features")):
                return set(line.split(":", 1)[1].split())
    return set()


def cache_sizes() -> list[str]:
    """``["L1d 48K", "L1i 32K", "L2 1024K", "L3 32768K"]`` of one core (per instance)."""
    found = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = (
                (index / f).read_text().strip() for f in ("level", "type", "size")
            )
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        found.append(f"L{level}{suffix} {size}")
    if found:
        return found
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return [
            " ".join(line.replace(" cache", "").split()[:3]).replace(":", "")
            for line in out.splitlines()
            if line.strip().startswith(("L1d", "L1i", "L2", "L3"))
        ]
    return []


def describe() -> str:
    """One sentence: CPU, cores, ISA flags, torch's dispatch level, caches, tuning state."""
    flags = cpu_flags()
    isa = [f for f in ISA_FLAGS if f in flags]
    caches = ", ".join(cache_sizes()) or "unknown"
    state = f"on, cache {cache_path()}" if tuning.enabled() else "off (defaults)"
    return (
        f"CPU {env.cpu_model()} ({os.cpu_count()} CPUs; ISA {' '.join(isa) or 'unknown'}; "
        f"torch dispatch {torch.backends.cpu.get_cpu_capability()}; caches {caches}); "
        f"engine tuning {state}; "
    )


def _values(config: dict) -> str:
    names = [k for k in config if not k.endswith("_tuned")]
    return ", ".join(
        f"{k}={config[k]}{' (tuned)' if config.get(f'{k}_tuned') else ' (not tuned)'}"
        for k in names
    )


def tuned_section(table: Table) -> list[str]:
    """Markdown lines: the engine knobs each variant ran with, per masking."""
    seen: dict[tuple[str, str], str] = {}
    for (_, causal), cells in table.passes.items():
        for cell in cells.values():
            if cell.tuned:
                masking = "causal" if causal else "bidirectional"
                seen.setdefault((cell.label, masking), _values(cell.tuned))
    if not seen:
        return []
    lines = ["", "Engine knobs each variant ran with (tuned on this machine, or set/default):", ""]
    lines += ["| variant | masking | knobs |", "| --- | --- | --- |"]
    lines += [f"| {label} | {masking} | {text} |" for (label, masking), text in seen.items()]
    return lines
