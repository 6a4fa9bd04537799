"""Result rows: the column contract, atomic writing, and reading sweep folders back.

One row per measurement point and pass (``fwd``, ``bwd``, ``fwd_bwd``). Each job writes its rows
as JSON Lines to ``<job dir>/rows.jsonl`` atomically (temporary file, then ``os.replace``), so
an interrupted sweep never leaves a half-written file.

Rows explain themselves: ``exact``, ``randomized``, ``knob`` and ``knob_value`` say what the
variant is, and ``params`` is a mapping, so whoever reads rows needs no variant code. In
``rows.jsonl`` ``params`` is a JSON object; in ``results.csv`` it is JSON text (see
:func:`flat_frame`), which :func:`read_rows` turns back into a dict (:func:`parse_params`, the
one place that parses it).

Reading is tolerant: a corrupt line is named (file and line number) in a warning and skipped, and
the file's valid rows are kept. The sweep's resume and the report read through the same
:func:`load_row_file`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: The columns of every row, in order. Rows may carry extra columns after these (realmodel).
COLUMNS: list[str] = [
    "run_id",
    "experiment",
    "point_id",
    "variant",
    "params",
    "exact",
    "randomized",
    "knob",
    "knob_value",
    "device",
    "device_name",
    "cpu_model",
    "dtype",
    "threads",
    "batch",
    "heads",
    "kv_heads",
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
    "memory_budget_bytes",
    "flops",
    "tflops",
    "matmul_tflops",
    "matmul_tflops_bf16",
    "l2_flushed",
    "rel_err",
    "rel_err_std",
    "max_abs_err",
    "cosine",
    "baseline_zeros_rel_err",
    "baseline_uniform_rel_err",
    "ref_rows",
    "trained",
    "tuned",
    "seeds",
    "grad_rel_err",
    "grad_rel_err_std",
    "attn_tv",
    "attn_js",
    "attn_kl_support",
    "attn_missing_mass",
    "attn_row_sum_err",
    "attn_negative_mass",
    "python",
    "platform",
    "torch",
    "cuda",
    "xformers",
    "gpu_driver",
    "gpu_sm_clock_mhz",
    "gpu_max_sm_clock_mhz",
    "gpu_mem_clock_mhz",
    "git_commit",
    "host",
    "time",
]

#: ``over_budget``: refused by the pass's memory estimate before allocating (the reason names
#: the estimate and the budget); ``oom``: a real allocation failure.
STATUSES = ("ok", "over_budget", "oom", "unsupported", "nan", "error", "skipped")
PASSES = ("fwd", "bwd", "fwd_bwd")
DTYPES = ("float16", "bfloat16", "float32", "float64")
ROWS_FILE = "rows.jsonl"
RESULTS_CSV = "results.csv"
#: Columns that hold a mapping: JSON objects in rows.jsonl, JSON text in results.csv (``tuned``:
#: the engine knobs a row ran with, ``{"chunk_size": 64, "chunk_size_tuned": true}``).
MAPPING_COLUMNS: tuple[str, ...] = ("params", "inputs_params", "tuned")
#: A point measured twice (a resumed or repeated sweep) is the same row: the newest is kept.
#: A point measured again keeps its newest row per key; ``stage`` separates a transfer point's
#: before and after rows.
DEDUP_KEY: tuple[str, ...] = ("point_id", "pass", "stage", "host", "device")


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


def load_row_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The valid rows of one JSON Lines file.

    A line that is not a JSON object (a write cut short, a hand edit) is named in a
    ``UserWarning`` with the file and line number and skipped; the file's other rows are kept.
    An unreadable file is warned about the same way and gives no rows.
    """
    rows: list[dict[str, Any]] = []
    try:
        with open(path) as fh:
            lines = list(fh)
    except (OSError, UnicodeDecodeError) as exc:
        warnings.warn(f"{path}: cannot read rows ({exc}); skipped", stacklevel=2)
        return rows
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            problem = "" if isinstance(row, dict) else "a row must be a JSON object"
        except json.JSONDecodeError as exc:
            problem = f"not valid JSON ({exc.msg})"
        if problem:
            warnings.warn(f"{path}:{lineno}: {problem}; line skipped", stacklevel=2)
            continue
        rows.append(row)
    return rows


def point_ids(folders: Iterable[str | os.PathLike], exclude: Path | None = None) -> set[str]:
    """The ``point_id`` of every valid row below ``folders`` (what a resumed sweep skips).

    Args:
        folders: Sweep folders (searched recursively) or rows.jsonl files.
        exclude: A job folder whose own rows.jsonl is left out (the job being run).
    """
    ids: set[str] = set()
    for path in iter_row_files(folders):
        if exclude is not None and path.parent == Path(exclude):
            continue
        ids.update(r["point_id"] for r in load_row_file(path) if r.get("point_id"))
    return ids


def parse_params(value: Any) -> dict[str, Any]:
    """A ``params`` / ``inputs_params`` cell as a dict: a mapping as is, JSON text parsed.

    Anything else (None, NaN, text that is not a JSON object) is the empty dict.
    """
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return {}
        return dict(parsed) if isinstance(parsed, Mapping) else {}
    return {}


def parse_json(value: Any) -> Any:
    """A cell that a CSV round trip turned into JSON text (a list or object), parsed back.

    Any other value is returned as it is; JSON text that does not parse is None.
    """
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return None
    return value


def deduplicate(df):
    """``df`` without repeated points, oldest first: per :data:`DEDUP_KEY` the newest row.

    Rows are ordered by ``time`` (stable, so rows of one time keep their order); rows without a
    ``point_id`` are all kept, since nothing says they repeat each other.
    """
    if not len(df) or "point_id" not in df.columns:
        return df.reset_index(drop=True)
    if "time" in df.columns:
        df = df.sort_values("time", kind="stable")
    key = [c for c in DEDUP_KEY if c in df.columns]
    repeated = df["point_id"].notna() & df.duplicated(subset=key, keep="last")
    return df[~repeated].reset_index(drop=True)


def flat_frame(df):
    """A copy of ``df`` ready for CSV or Parquet: mappings and lists as JSON text."""

    def flat(value: Any) -> Any:
        if isinstance(value, (dict, list, tuple)):
            return json.dumps(_clean(value), sort_keys=True)
        return value

    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(flat)
    return out


def _row_sources(folders: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """(CSV files, rows.jsonl inputs): a folder without rows.jsonl is read from its results.csv."""
    csvs: list[Path] = []
    jsonl: list[Path] = []
    for folder in folders:
        p = Path(folder)
        if p.is_file() and p.suffix == ".csv":
            csvs.append(p)
        elif p.is_dir() and not iter_row_files([p]) and (p / RESULTS_CSV).is_file():
            csvs.append(p / RESULTS_CSV)
        else:
            jsonl.append(p)
    return csvs, jsonl


def read_rows(folders: Iterable[str | os.PathLike]):
    """All rows below ``folders`` as a pandas DataFrame with at least :data:`COLUMNS`.

    Args:
        folders: Sweep folders (every ``rows.jsonl`` below them), rows.jsonl files, results.csv
            files, or folders holding only a results.csv.

    Rows are read with :func:`load_row_file` (corrupt lines named and skipped), the mapping
    columns parsed into dicts (:func:`parse_params`), and repeated points de-duplicated
    (:func:`deduplicate`).
    """
    import pandas as pd

    csvs, jsonl = _row_sources(folders)
    rows: list[dict[str, Any]] = []
    for path in iter_row_files(jsonl):
        rows.extend(load_row_file(path))
    frames = [pd.DataFrame(rows)] + [pd.read_csv(p) for p in csvs]
    frames = [f for f in frames if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    for col in MAPPING_COLUMNS:
        df[col] = df[col].map(parse_params).astype(object)
    df = deduplicate(df)
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[COLUMNS + extra]
