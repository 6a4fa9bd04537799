"""The report's markdown: tables of the summary, the environment, failures and real-model points.

Plain GitHub markdown without a tabulate dependency; every function takes prepared rows or the
summary table of :func:`harness.analysis.scaling.summary_table` and returns text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from harness.analysis.series import DIVERGENCES, as_mapping, series_labels
from harness.report.style import inputs_label, most_common_inputs, slope_text

#: Columns of the environment table, in order.
ENVIRONMENT_COLUMNS = (
    "device", "device_name", "cpu_model", "host", "threads", "torch", "cuda", "xformers",
    "git_commit", "dtype", "run_id", "experiment",
)  # fmt: skip
#: Statuses of points that did not run.
FAILURES: tuple[str, ...] = ("oom", "over_budget", "unsupported", "error", "nan", "skipped")


def fmt(value: object, digits: int = 3) -> str:
    """A cell: integers plainly, other numbers to ``digits`` significant digits, – for none."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer() and abs(value) >= 1:
            return str(int(value))
        return f"{value:.{digits}g}"
    return str(value)


def _fit(row: pd.Series, prefix: str) -> dict[str, object]:
    """The ``<prefix>_*`` fit columns of a summary row as a fit mapping (see ``slope_text``)."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in row.items() if isinstance(k, str) and k.startswith(prefix + "_")}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table (no tabulate dependency); pipes in cells are escaped."""
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines)


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


def environment_markdown(df: pd.DataFrame) -> str:
    """One table of the environment columns: each distinct value (several -> listed)."""
    rows = []
    for col in ENVIRONMENT_COLUMNS:
        values = sorted({str(v) for v in df[col].dropna()})
        if values:
            rows.append([col, ", ".join(values[:6]) + (" …" if len(values) > 6 else "")])
    times = pd.to_datetime(df["time"], errors="coerce", utc=True).dropna()
    if len(times):
        rows.append(
            ["measured", f"{times.min():%Y-%m-%d %H:%M} – {times.max():%Y-%m-%d %H:%M} UTC"]
        )
    return markdown_table(["", "value"], rows)


def failures_markdown(df: pd.DataFrame) -> str:
    """Counts of points per status and the reasons of those that did not run."""
    points = df.drop_duplicates(
        subset=["series", "kv_len", "pass", "status", "reason", "point_id"]
    )
    counts = points["status"].value_counts()
    lines = ["Rows per status: " + ", ".join(f"{s} {n}" for s, n in counts.items()) + "."]
    bad = points[points["status"].isin(FAILURES)]
    if not len(bad):
        return lines[0] + " Every point ran."
    grouped = bad.groupby(["status", "variant", "reason"], dropna=False).size()
    rows = [
        [s, v, str(r) if isinstance(r, str) else "(no reason recorded)", str(n)]
        for (s, v, r), n in grouped.items()
    ]
    return lines[0] + "\n\n" + markdown_table(["status", "variant", "reason", "rows"], rows)


def _flag_cell(values: pd.Series) -> str:
    """A boolean column of a group: "yes" if any row says so, "no", or "n/a" when absent."""
    known = values.dropna()
    if not len(known):
        return "n/a"
    return "yes" if known.map(lambda v: str(v).strip().lower() in ("true", "1")).any() else "no"


def _top1(r: pd.Series) -> str:
    """Retrieval top-1 with its 95% interval where the rows carry one, and exact's top-1."""
    text = fmt(r["retrieval_top1"])
    if np.isfinite(r["retrieval_top1_lo"]) and np.isfinite(r["retrieval_top1_hi"]):
        text += f" [{fmt(r['retrieval_top1_lo'])}, {fmt(r['retrieval_top1_hi'])}]"
    return f"{text} (exact {fmt(r['retrieval_exact_top1'])})"


def _discordant(r: pd.Series) -> str:
    """ "better / worse" pairs against exact attention, or n/a (older rows)."""
    if not (np.isfinite(r["retrieval_better"]) and np.isfinite(r["retrieval_worse"])):
        return "n/a"
    return f"{fmt(r['retrieval_better'])} / {fmt(r['retrieval_worse'])}"


#: Numeric columns of the real-model table (absent ones read n/a or –).
REALMODEL_NUMBERS = (
    "embed_cosine", "embed_cosine_min", "retrieval_exact_top1", "retrieval_top1",
    "retrieval_top1_lo", "retrieval_top1_hi", "retrieval_better", "retrieval_worse",
    "retrieval_mcnemar_p", "retrieval_pairs", "retrieval_mean_rank", "retrieval_agree_top1",
    "time_ms", "exact_time_ms",
)  # fmt: skip


def realmodel_markdown(df: pd.DataFrame) -> str:
    """Table of the real-model points (task ``realmodel``), one row per variant and knob value.

    Embedding cosine to the exact model (mean and worst text); the retrieval check: top-1 with
    its 95% interval against exact attention's, the discordant pairs (the variant right where
    exact attention is wrong / the opposite) and McNemar's p on them, the mean rank of the true
    pair and the fraction whose best candidate agrees with exact; whether the variant does more
    attention work than exact attention at these lengths; the model's forward time against the
    exact model's. Whole-model rows have no TFLOP/s (attention FLOPs over whole-model time
    would mean nothing). Columns older rows lack read n/a. Empty string when there are no such
    rows. The variant cell carries its label (``untrained``, ``eps``) without the knob.
    """
    if "task" not in df.columns or "embed_cosine" not in df.columns:
        return ""
    rows = df[(df["task"] == "realmodel") & (df["status"] == "ok")]
    if rows.empty:
        return ""
    rows = rows.assign(
        label=series_labels(rows, {v: [k] for v, k in zip(rows["variant"], rows["knob"])})
    )
    rows = rows.reindex(columns=["label", "knob", "knob_value", "work_exceeds_exact",
                                 *REALMODEL_NUMBERS])  # fmt: skip
    for col in (*REALMODEL_NUMBERS, "knob_value"):
        rows[col] = pd.to_numeric(rows[col], errors="coerce")
    groups = rows.groupby(["label", "knob", "knob_value"], dropna=False)
    grouped = groups[list(REALMODEL_NUMBERS)].median()
    work = groups["work_exceeds_exact"].agg(_flag_cell)
    out = []
    # zip, not work.loc[key]: a variant without a knob has NaN in its key, which .loc misses
    for (key, r), flag in zip(grouped.iterrows(), work):
        label, knob, value = key
        out.append(
            [
                str(label),
                "–" if pd.isna(knob) else f"{knob}={fmt(value)}",
                fmt(r["embed_cosine"], 5),
                fmt(r["embed_cosine_min"], 5),
                _top1(r),
                _discordant(r),
                fmt(r["retrieval_mcnemar_p"], 2)
                if np.isfinite(r["retrieval_mcnemar_p"])
                else "n/a",
                fmt(r["retrieval_mean_rank"]),
                fmt(r["retrieval_agree_top1"]),
                flag,
                f"{fmt(r['time_ms'])} / {fmt(r['exact_time_ms'])}",
            ]
        )
    header = ["variant", "knob", "embedding cosine (mean)", "cosine (worst text)",
              "retrieval top-1 [95% CI]", "pairs better / worse than exact", "McNemar p",
              "mean rank of true pair", "top-1 agrees with exact",
              "more attention FLOPs than exact", "model time ms / exact ms"]  # fmt: skip
    pairs = sorted({int(p) for p in rows["retrieval_pairs"].dropna()})
    note = f"Retrieval over {' / '.join(map(str, pairs))} pairs.\n\n" if pairs else ""
    return note + markdown_table(header, out)


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
