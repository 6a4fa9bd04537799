"""Stored rows at the user's setting on this machine, summarised per arm.

**This machine** is the same device type and device name (the GPU's, or the CPU model) and the
same host class: the same CPU model and, on the CPU, the same torch thread count. The host name
is not compared: two containers of one machine type are one host class, and their rows pool.

**The setting** is the same task (attention; the decode task in decode mode), pass, batch, heads,
key/value heads, lengths, head dimension, dtype and causal flag. Time and memory come from any
such row; the approximation error only from rows on the suite's realistic inputs
(``structured``), since errors depend on the inputs.

An **arm** is one configuration of one variant, named as the report names series
(:func:`harness.analysis.series.series_labels`): the variant and the parameters that differ
among its rows here, with seeds, the resolved backend and engine knobs (``tuned``) left out.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.advise.setting import Setting
from harness.analysis.rows import iter_row_files, load_row_file, read_rows
from harness.analysis.series import SHAPE_PARAMS, as_mapping, prepare, series_labels
from harness.analysis.trained import IGNORED_PARAMS
from harness.measure import env

#: Inputs whose errors count ("realistic"): the structured inputs fitted to a real model's.
REALISTIC_INPUTS = ("structured",)


def machine(device: str) -> dict[str, Any]:
    """This machine's facts as rows record them (``device`` type, ``device_name``,
    ``cpu_model``, ``threads``, ``host``)."""
    facts = env.environment(device)
    return {
        "device": device.split(":")[0],
        "device_name": facts["device_name"],
        "cpu_model": facts["cpu_model"],
        "threads": facts["threads"],
        "host": facts["host"],
    }


def load(folders: Iterable[str | Path]) -> pd.DataFrame:
    """Every row below ``folders`` (:func:`harness.analysis.rows.read_rows`), prepared, with
    ``folder``: the job folder its rows.jsonl is in (or the folder given)."""
    folders = [Path(f) for f in folders if Path(f).exists()]
    df = read_rows(folders)
    if not len(df):
        return df.assign(folder=pd.Series(dtype=object))
    where: dict[str, str] = {}
    with warnings.catch_warnings():  # read_rows has named corrupt lines once already
        warnings.simplefilter("ignore")
        for path in iter_row_files(folders):
            for row in load_row_file(path):
                if row.get("point_id"):
                    where[str(row["point_id"])] = str(path.parent)
    df = prepare(df)
    given = str(folders[0]) if len(folders) == 1 else ", ".join(map(str, folders))
    df["folder"] = [where.get(str(p), given) for p in df["point_id"]]
    return df


def _same(col: pd.Series, value: Any) -> pd.Series:
    return pd.to_numeric(col, errors="coerce") == float(value)


def on_this_machine(df: pd.DataFrame, facts: Mapping[str, Any]) -> pd.Series:
    """Which rows were measured on this machine (module docstring)."""
    if not len(df):
        return pd.Series(dtype=bool)
    device = df["device"].astype(str).str.split(":").str[0] == facts["device"]
    same = device & (df["device_name"] == facts["device_name"])
    same &= df["cpu_model"] == facts["cpu_model"]
    if facts["device"] == "cpu":
        same &= _same(df["threads"], facts["threads"])
    return same


def at_setting(df: pd.DataFrame, setting: Setting, facts: Mapping[str, Any]) -> pd.DataFrame:
    """The rows of this machine that measured the setting (module docstring)."""
    if not len(df):
        return df
    task = df["task"].where(df["task"].notna(), "attention") if "task" in df else "attention"
    kv_heads = pd.to_numeric(df["kv_heads"], errors="coerce").fillna(df["heads"])
    q_len = 1 if setting.mode == "decode" else setting.seq_len
    keep = on_this_machine(df, facts) & (task == setting.task)
    keep &= df["pass"] == setting.pass_name
    for col, value in (
        ("batch", setting.batch), ("heads", setting.heads), ("q_len", q_len),
        ("kv_len", setting.kv_len), ("head_dim", setting.head_dim),
    ):  # fmt: skip
        keep &= _same(df[col], value)
    keep &= _same(kv_heads, setting.kv_heads)
    keep &= (df["dtype"] == setting.dtype) & (df["causal"] == bool(setting.causal))
    return df[keep]


def engine_params(rows: pd.DataFrame) -> set[str]:
    """Parameters that change results only by rounding: the keys of the rows' ``tuned``."""
    names: set[str] = set()
    for tuned in rows.get("tuned", pd.Series(dtype=object)):
        names |= {k for k in as_mapping(tuned) if not k.endswith("_tuned")}
    return names


def label_arms(rows: pd.DataFrame) -> pd.Series:
    """The arm label of every row (module docstring)."""
    ignore = {
        v: IGNORED_PARAMS | engine_params(rows[rows["variant"] == v])
        for v in rows["variant"].unique()
    }
    return series_labels(rows, ignore)


def _key(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True, default=str)


def matches(row_params: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether a row's parameters hold every set value of ``wanted`` (None: auto, any)."""
    row_params = as_mapping(row_params)
    for name, value in wanted.items():
        if value is None or name in IGNORED_PARAMS or name in SHAPE_PARAMS:
            continue
        if _key(row_params.get(name)) != _key(value):
            return False
    return True


def covers(rows: pd.DataFrame, variant: str, params: Mapping[str, Any], point_id: str) -> bool:
    """Whether ``rows`` (at the setting) already hold the point: its id, or the variant with
    these parameters (any status: a point that cannot run is not measured again)."""
    if not len(rows):
        return False
    if (rows["point_id"] == point_id).any():
        return True
    mine = rows[rows["variant"] == variant]
    return any(matches(p, params) for p in mine["params"])


def _median(values: pd.Series) -> float:
    got = pd.to_numeric(values, errors="coerce").dropna()
    return float(got.median()) if len(got) else math.nan


def _flag(value: Any, default: bool) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0")
    return bool(value)


def memory_column(setting: Setting) -> str:
    """The column that is the setting's memory: a decode step's state, else the pass's peak."""
    return "state_bytes_measured" if setting.mode == "decode" else "peak_mem_bytes"


def arms(rows: pd.DataFrame, setting: Setting) -> pd.DataFrame:
    """One row per arm of ``rows`` (at the setting): its facts, medians and evidence.

    Columns: ``arm``, ``variant``, ``knob``, ``knob_value``, ``params`` (the distinguishing
    ones, for the command), ``exact``, ``approximates_softmax`` (True where rows lack it),
    ``status`` (ok when any row ran), ``reason``, ``time_ms``, ``peak_mem_bytes`` (decode: the
    measured state), ``rel_err`` and ``baseline_uniform_rel_err`` (realistic inputs only),
    ``inputs``, ``evidence`` ([{folder, point_ids}]), ``all_params`` (the newest row's).
    """
    columns = [
        "arm", "variant", "knob", "knob_value", "params", "all_params", "exact",
        "approximates_softmax", "status", "reason", "time_ms", "peak_mem_bytes", "rel_err",
        "baseline_uniform_rel_err", "inputs", "evidence",
    ]  # fmt: skip
    if not len(rows):
        return pd.DataFrame(columns=columns)
    rows = rows.assign(arm=label_arms(rows))
    mem_col = memory_column(setting)
    if mem_col not in rows:
        rows[mem_col] = np.nan
    out = []
    for label, group in rows.groupby("arm", sort=False):
        group = group.sort_values("time", na_position="first") if "time" in group else group
        ok = group[
            (group["status"] == "ok") & pd.to_numeric(group["time_ms"], errors="coerce").notna()
        ]
        newest = (ok if len(ok) else group).iloc[-1]
        realistic = ok[ok["inputs"].isin(REALISTIC_INPUTS)]
        evidence: dict[str, list[str]] = {}
        for r in (ok if len(ok) else group).itertuples():
            evidence.setdefault(str(r.folder), []).append(str(r.point_id))
        out.append(
            {
                "arm": label,
                "variant": newest["variant"],
                "knob": newest["knob"] if isinstance(newest["knob"], str) else None,
                "knob_value": newest["knob_value"] if isinstance(newest["knob"], str) else None,
                "params": distinguishing(label, as_mapping(newest["params"]), newest["knob"]),
                "all_params": as_mapping(newest["params"]),
                "exact": _flag(newest["exact"], False),
                "approximates_softmax": _flag(newest.get("approximates_softmax"), True),
                "status": "ok" if len(ok) else str(newest["status"]),
                "reason": None if len(ok) else newest.get("reason"),
                "time_ms": _median(ok["time_ms"]),
                "peak_mem_bytes": _median(ok[mem_col]),
                "rel_err": _median(realistic["rel_err"]),
                "baseline_uniform_rel_err": _median(realistic["baseline_uniform_rel_err"]),
                "inputs": ", ".join(sorted(set(map(str, realistic["inputs"])))) or None,
                "evidence": [
                    {"folder": f, "point_ids": sorted(set(p))} for f, p in evidence.items()
                ],
            }
        )
    return pd.DataFrame(out, columns=columns)


def distinguishing(label: str, params: Mapping[str, Any], knob: Any) -> dict[str, Any]:
    """The parameters an arm's label names, the knob left out (it has its own override)."""
    inner = label.split("(", 1)[1].rsplit(")", 1)[0] if "(" in label else ""
    names = [part.split("=", 1)[0].strip() for part in inner.split(", ") if "=" in part]
    return {n: params.get(n) for n in names if n != knob and n in params}
