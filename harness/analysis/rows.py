"""Result rows: the column contract, atomic writing, and reading sweep folders back.

One row per measurement point and pass (``fwd``, ``bwd``, ``fwd_bwd``). Each job writes its rows
as JSON Lines to ``<job dir>/rows.jsonl`` atomically (temporary file, then ``os.replace``), so
an interrupted sweep never leaves a half-written file. :func:`read_rows` gathers every
``rows.jsonl`` below one or more folders into a pandas DataFrame, warning by name about any file
it cannot parse and keeping the rest.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: The columns of DESIGN.md, in order. Rows may carry extra columns after these (realmodel).
COLUMNS: list[str] = [
    "run_id",
    "experiment",
    "point_id",
    "variant",
    "params",
    "device",
    "device_name",
    "cpu_model",
    "dtype",
    "threads",
    "batch",
    "heads",
    "q_len",
    "kv_len",
    "head_dim",
    "causal",
    "inputs",
    "inputs_params",
    "seed",
    "pass",
    "status",
    "reason",
    "time_ms",
    "time_iqr_ms",
    "repeats",
    "setup_ms",
    "peak_mem_bytes",
    "analytic_mem_bytes",
    "flops",
    "tflops",
    "matmul_tflops",
    "rel_err",
    "rel_err_std",
    "max_abs_err",
    "cosine",
    "seeds",
    "grad_rel_err",
    "grad_rel_err_std",
    "attn_kl",
    "attn_tv",
    "torch",
    "cuda",
    "xformers",
    "git_commit",
    "host",
    "time",
]

STATUSES = ("ok", "oom", "unsupported", "nan", "error", "skipped")
PASSES = ("fwd", "bwd", "fwd_bwd")
ROWS_FILE = "rows.jsonl"


def _clean(value: Any) -> Any:
    """JSON-safe value: NaN/Inf floats become None, tuples lists, other objects strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return _clean(value.item())
    return str(value)


def complete_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row with every column of :data:`COLUMNS` present (missing ones ``None``)."""
    out = {col: row.get(col) for col in COLUMNS}
    out.update({k: v for k, v in row.items() if k not in out})
    return {k: _clean(v) for k, v in out.items()}


def write_rows(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> Path:
    """Write ``rows`` as JSON Lines to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".rows-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            for row in rows:
                fh.write(json.dumps(complete_row(row), sort_keys=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def iter_row_files(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Every ``rows.jsonl`` below the given folders (a file path is taken as is), sorted."""
    files: list[Path] = []
    for folder in folders:
        p = Path(folder)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files.extend(sorted(p.rglob(ROWS_FILE)))
    return files


def load_row_file(path: Path) -> list[dict[str, Any]]:
    """Rows of one JSON Lines file; raises ``ValueError`` naming the file and line if corrupt."""
    rows = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: a row must be a JSON object")
            rows.append(row)
    return rows


def read_rows(folders: Iterable[str | os.PathLike]):
    """All rows below ``folders`` as a pandas DataFrame with at least :data:`COLUMNS`.

    A corrupt file is named in a ``UserWarning`` and skipped; the rest are read. Rows with the
    same ``(point_id, pass, host, device)`` are de-duplicated, the newest kept.
    """
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for path in iter_row_files(folders):
        try:
            rows.extend(load_row_file(path))
        except (ValueError, OSError) as exc:
            warnings.warn(f"skipping corrupt rows file {path}: {exc}", stacklevel=2)
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    if len(df):
        key = [c for c in ("point_id", "pass", "host", "device") if c in df.columns]
        df = df.sort_values("time", kind="stable").drop_duplicates(subset=key, keep="last")
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[COLUMNS + extra].reset_index(drop=True)
