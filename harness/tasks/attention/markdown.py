"""The attention task's markdown: the scaling summary table, the divergences of the effective
attention matrix, and the statistics of fitted inputs.

Every function takes prepared rows or the summary table of
:func:`harness.analysis.scaling.summary_table` and returns text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pandas as pd

from harness.analysis.series import DIVERGENCES, as_mapping
from harness.report.markdown import fmt, markdown_table
from harness.report.style import inputs_label, most_common_inputs, slope_text


def _fit(row: pd.Series, prefix: str) -> dict[str, object]:
    """The ``<prefix>_*`` fit columns of a summary row as a fit mapping (see ``slope_text``)."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in row.items() if isinstance(k, str) and k.startswith(prefix + "_")}


def _gb(budgets: pd.Series) -> str:
    """The memory budget(s) in GB (the config's unit, 1e9 bytes), or why it is unknown."""
    values = sorted({float(b) for b in budgets.dropna()})
    if not values:
        return "budget not recorded"
    return " / ".join(f"{b / 1e9:g} GB" for b in values)


def _limit_column(table: pd.DataFrame) -> tuple[str, list[str]]:
    """Header and cells of the memory-limit column: what happened decides its wording.

    Refused by the estimate: "largest n within budget (16 GB)"; a real allocation failure:
    "largest n before OOM"; both in one table: both, with each cell saying which.
    """
    hit = {v for v in table["limit"] if isinstance(v, str)} - {""}
    budget = _gb(table.loc[table["limit"] == "over_budget", "memory_budget_bytes"])
    header = {
        frozenset(): "largest n run",
        frozenset({"oom"}): "largest n before OOM",
        frozenset({"over_budget"}): f"largest n within budget ({budget})",
    }.get(frozenset(hit), f"largest n within budget ({budget}) or before OOM")
    cells = []
    for _, r in table.iterrows():
        limit = r["limit"] if isinstance(r["limit"], str) else ""
        if not limit:  # nothing refused: the largest length tried is a lower bound
            ok = np.isfinite(r["max_ok_kv_len"])
            cells.append(f"≥ {fmt(r['max_ok_kv_len'])} (all fit)" if ok else "–")
            continue
        which = {"oom": " (OOM)", "over_budget": " (budget)"}[limit] if len(hit) > 1 else ""
        cells.append(fmt(r["max_ok_kv_len"]) + which)
    return header, cells


def _cross(row: pd.Series, column: str) -> str:
    """A crossover cell: the length, "≤ n" when already smaller at the first common length."""
    if row.get(f"{column}_at_start") is True or row.get(f"{column}_at_start") == 1:
        return f"≤ {fmt(row[column], 4)}"
    return fmt(row[column], 4)


def summary_markdown(table: pd.DataFrame) -> str:
    """The summary table of :func:`harness.analysis.scaling.summary_table` as markdown.

    The uniform-attention column appears where rows carry ``baseline_uniform_rel_err``.
    """
    crosses = ("time_cross_full", "time_cross_sdpa", "mem_cross_full", "mem_cross_sdpa")
    limit_header, limit_cells = _limit_column(table)
    uniform = "uniform_rel_err" in table.columns and table["uniform_rel_err"].notna().any()
    header = [
        "series",
        "time slope [95% CI]",
        "memory slope [95% CI]",
        "faster than full from n",
        "faster than sdpa from n",
        "smaller than full from n",
        "smaller than sdpa from n",
        limit_header,
        "rel_err at n_ref",
        *(["uniform attention rel_err"] if uniform else []),
        "TFLOP/s",
        "of matmul rate",
    ]
    varying = [
        c for c in ("dtype", "causal", "batch", "heads", "head_dim") if table[c].nunique() > 1
    ]
    header = header[:1] + varying + header[1:]
    out = []
    for (_, r), limit in zip(table.iterrows(), limit_cells):
        rate = f"{100 * r['rate_frac']:.1f}%" if np.isfinite(r["rate_frac"]) else "–"
        out.append(
            [r["series"]]
            + [fmt(r[c]) for c in varying]
            + [slope_text(_fit(r, "time")), slope_text(_fit(r, "mem"))]
            + [_cross(r, c) for c in crosses]
            + [limit, fmt(r["rel_err"])]
            + ([fmt(r["uniform_rel_err"])] if uniform else [])
            + [fmt(r["tflops"]), rate]
        )
    return markdown_table(header, out)


def divergence_markdown(df: pd.DataFrame) -> str:
    """Divergences of each series' effective attention matrix from exact attention's.

    Read at the length where the most series have ``attn_tv`` (the headline: total
    variation), on the most common inputs setting, with every other divergence column that
    any row there carries (:data:`harness.analysis.series.DIVERGENCES`). Empty string when no
    row has a divergence (older rows: ``attn_kl`` alone is not shown, it depended on a floor).
    """
    have = [c for c in DIVERGENCES if c in df.columns]
    rows = df[(df["pass"] == "fwd") & (df["status"] == "ok")]
    rows = rows[rows[have].notna().any(axis=1)] if have else rows.iloc[:0]
    if not len(rows):
        return ""
    rows, inputs = most_common_inputs(rows)
    per_len = rows.groupby("kv_len")["series"].nunique()
    kv_len = float(per_len[per_len == per_len.max()].index.max())
    rows = rows[rows["kv_len"] == kv_len]
    cols = [c for c in have if rows[c].notna().any()]
    table = rows.groupby("series", sort=True)[cols].median()
    body = [[series] + [fmt(r[c]) for c in cols] for series, r in table.iterrows()]
    lead = f"At n = {int(kv_len)}, inputs {inputs}; medians over seeds and repeats.\n\n"
    return lead + markdown_table(["series", *[DIVERGENCE_NAMES.get(c, c) for c in cols]], body)


#: Column headers of the divergence table.
DIVERGENCE_NAMES: dict[str, str] = {
    "attn_tv": "total variation (headline)",
    "attn_js": "Jensen-Shannon (nats)",
    "attn_kl_support": "KL on the variant's support",
    "attn_missing_mass": "exact mass where the variant is zero",
    "attn_row_sum_err": "mean abs(row sum − 1)",
    "attn_negative_mass": "negative mass per row",
}


def fitted_inputs_markdown(df: pd.DataFrame) -> str:
    """The statistics each fitted input was fitted to, beside the real model's.

    An inputs setting whose ``inputs_params["fit"]`` holds a ``real`` mapping of statistics and
    one for the input itself (keyed by its name, e.g. ``structured``) gets one table of the
    scalar statistics both have (row entropy, attention-sink mass, ...), so a reader sees how
    close the synthetic input is. Empty string when no row has such a fit.
    """
    tables = []
    seen: set[str] = set()
    for name, params in zip(df["inputs"], df["inputs_params"]):
        fit = as_mapping(params).get("fit")
        if not isinstance(fit, Mapping) or not isinstance(fit.get("real"), Mapping):
            continue
        mine = fit.get(name)
        key = json.dumps(fit, sort_keys=True, default=str)
        if not isinstance(mine, Mapping) or key in seen:
            continue
        seen.add(key)
        stats = [k for k in fit["real"] if isinstance(fit["real"][k], (int, float)) and k in mine]
        body = [[k, fmt(float(fit["real"][k])), fmt(float(mine[k]))] for k in stats]
        lead = f"Inputs {inputs_label(name, params)}, fitted to {fit.get('source', 'a model')}:"
        tables.append(lead + "\n\n" + markdown_table(["statistic", "real model", name], body))
    return "\n\n".join(tables)
