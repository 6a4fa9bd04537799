"""The decode rows made ready for the section: lines, the exact baseline, slopes, crossovers.

A *line* is one series (variant and its distinguishing params) at one setting of what changes a
step's cost besides the context: ``kv_heads``, ``batch``, ``q_tokens``, ``dtype``. Its *group*
is that setting; the *exact baseline* of a group is its exact line (exact softmax over a KV
cache) with the lowest median per-token time, and a variant's crossover is the context from
which its step is faster than that baseline (interpolated in log-log space between measured
contexts).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Columns that make a line's group (besides the device).
GROUP = ("dtype", "batch", "heads", "kv_heads", "head_dim", "q_tokens")


def decode_lines(rows: pd.DataFrame) -> pd.DataFrame:
    """The ``ok`` rows with ``line`` (label), ``group`` (text) and numeric decode columns.

    Labels add ``kv_heads=N`` to grouped rows, and the batch, query tokens or dtype where the
    rows hold more than one.
    """
    ok = rows[rows["status"] == "ok"].copy()
    if not len(ok):
        return ok.assign(line=pd.Series(dtype=object), group=pd.Series(dtype=object))
    for col in ("kv_heads", "q_tokens"):
        if col not in ok.columns:
            ok[col] = np.nan
    ok["kv_heads"] = pd.to_numeric(ok["kv_heads"], errors="coerce").fillna(ok["heads"]).astype(int)
    ok["q_tokens"] = pd.to_numeric(ok["q_tokens"], errors="coerce").fillna(1).astype(int)
    for col in NUMERIC:
        ok[col] = pd.to_numeric(ok[col], errors="coerce") if col in ok.columns else np.nan
    varying = [c for c in ("batch", "q_tokens", "dtype") if ok[c].nunique() > 1]

    def label(row: pd.Series) -> str:
        parts = [f"kv_heads={row['kv_heads']}"] if row["kv_heads"] != row["heads"] else []
        parts += [f"{c}={row[c]}" for c in varying]
        return row["series"] + (f" [{', '.join(parts)}]" if parts else "")

    ok["line"] = ok.apply(label, axis=1)
    ok["group"] = ok.apply(lambda r: " ".join(f"{c}={r[c]}" for c in GROUP), axis=1)
    return ok


#: Columns read as numbers.
NUMERIC = (
    "kv_len", "prefill_ms", "step_ms", "step_iqr_ms", "token_ms", "tokens_per_s", "state_bytes",
    "state_bytes_measured", "step_read_bytes", "achieved_gbs", "copy_gbs", "bandwidth_fraction",
    "decode_rel_err", "forward_rel_err", "model_tokens_per_s",
    "model_attention_share", "model_step_ms",
)  # fmt: skip


def curve(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Median positive ``metric`` per context (``kv_len``), sorted."""
    ok = rows[np.isfinite(rows[metric].astype(float)) & (rows[metric] > 0)]
    return ok.groupby("kv_len")[metric].median().sort_index()


def slope(points: pd.Series) -> float:
    """Least-squares slope of log(value) against log(context); NaN below two contexts."""
    if len(points) < 2:
        return float("nan")
    x, y = np.log(points.index.to_numpy(float)), np.log(points.to_numpy(float))
    return float(np.polyfit(x, y, 1)[0])


def baselines(lines: pd.DataFrame) -> dict[str, str]:
    """Per group, the line of its exact baseline (the fastest exact line)."""
    exact = lines[lines["exact"].astype(bool)]
    out = {}
    for group, rows in exact.groupby("group"):
        medians = rows.groupby("line")["token_ms"].median()
        out[str(group)] = str(medians.idxmin())
    return out


def crossover(variant: pd.Series, exact: pd.Series) -> tuple[float | None, str]:
    """Where ``variant``'s per-token time falls below ``exact``'s (both per context).

    Returns:
        ``(context, text)``: the interpolated context and its cell (``≤ n`` when faster at the
        first common context, ``> n`` when never within the measured ones, ``–`` when there is
        no common context).
    """
    common = variant.index.intersection(exact.index)
    if not len(common):
        return None, "–"
    ratio = np.log((variant[common] / exact[common]).to_numpy(float))
    x = np.log(common.to_numpy(float))
    if ratio[0] <= 0:
        return float(common[0]), f"≤ {int(common[0])}"
    for i in range(1, len(ratio)):
        if ratio[i] <= 0:
            at = x[i - 1] + (x[i] - x[i - 1]) * ratio[i - 1] / (ratio[i - 1] - ratio[i])
            n = float(np.exp(at))
            return n, f"{n:,.0f}"
    return None, f"> {int(common[-1])}"


def summary(lines: pd.DataFrame) -> pd.DataFrame:
    """One row per line: slope, crossover against its group's baseline, and its numbers at the
    longest context it shares with the baseline (else its own longest)."""
    base = baselines(lines)
    out = []
    for (group, line), rows in lines.groupby(["group", "line"], sort=False):
        times = curve(rows, "token_ms")
        ref_line = base.get(str(group))
        ref = curve(lines[(lines["group"] == group) & (lines["line"] == ref_line)], "token_ms")
        common = times.index.intersection(ref.index)
        at = common.max() if len(common) else (times.index.max() if len(times) else np.nan)
        last = rows[rows["kv_len"] == at]
        cross_n, cross = (None, "baseline") if line == ref_line else crossover(times, ref)
        first = rows.iloc[0]
        out.append(
            {
                "group": group,
                "line": line,
                "variant": first["variant"],
                "exact": bool(first["exact"]),
                "kv_heads": first["kv_heads"],
                **{c: first[c] for c in GROUP},
                "context": at,
                "slope": slope(times),
                "crossover": cross,
                "crossover_n": cross_n,
                "speedup": (ref.get(at) / times.get(at))
                if ref_line and at in ref.index
                else np.nan,
                "baseline": ref_line,
                **{c: last[c].median() for c in NUMERIC if c != "kv_len"},
            }
        )
    return pd.DataFrame(out)


def grouped_effect(lines: pd.DataFrame) -> pd.DataFrame:
    """Per series and setting measured with all and with fewer KV heads: at the longest context
    both have, the state and the step time with ``heads`` KV heads over those with fewer."""
    keys = ["series", "dtype", "batch", "heads", "head_dim", "q_tokens"]
    out = []
    for key, rows in lines.groupby(keys, sort=True):
        full = rows[rows["kv_heads"] == rows["heads"]]
        for kv_heads, grouped in rows[rows["kv_heads"] < rows["heads"]].groupby("kv_heads"):
            common = set(full["kv_len"]) & set(grouped["kv_len"])
            if not common:
                continue
            at = max(common)
            a, b = full[full["kv_len"] == at], grouped[grouped["kv_len"] == at]
            out.append(
                {
                    **dict(zip(keys, key)),
                    "kv_heads": kv_heads,
                    "context": at,
                    "state_ratio": a["state_bytes_measured"].median()
                    / b["state_bytes_measured"].median(),
                    "step_speedup": a["token_ms"].median() / b["token_ms"].median(),
                }
            )
    return pd.DataFrame(out)
