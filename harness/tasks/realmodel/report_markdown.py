"""The realmodel table: one row per variant and knob value, against the exact model."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.analysis.series import series_labels
from harness.report.markdown import fmt, markdown_table


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
    "embed_cosine", "embed_cosine_min", "embed_cosine_unrelated", "retrieval_exact_top1",
    "retrieval_top1", "retrieval_top1_lo", "retrieval_top1_hi", "retrieval_better",
    "retrieval_worse", "retrieval_mcnemar_p", "retrieval_pairs", "retrieval_mean_rank",
    "retrieval_agree_top1", "time_ms", "exact_time_ms",
)  # fmt: skip


def realmodel_markdown(df: pd.DataFrame) -> str:
    """Table of the real-model points (task ``realmodel``), one row per variant and knob value.

    Embedding cosine to the exact model (mean and worst text) and its reference, the exact
    model's cosine between different texts of one length (what unrelated text scores); the
    retrieval check: top-1 with its 95% interval against exact attention's, the discordant
    pairs (the variant right where exact attention is wrong / the opposite) and McNemar's p on
    them, the mean rank of the true pair and the fraction whose best candidate agrees with
    exact; whether the variant does more attention work than exact attention at these lengths;
    the model's forward time against the exact model's. Whole-model rows have no TFLOP/s
    (attention FLOPs over whole-model time would mean nothing). Columns older rows lack read
    n/a. Empty string when there are no such rows. The variant cell carries its label
    (``untrained``, ``eps``) without the knob.
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
                fmt(r["embed_cosine_unrelated"])
                if np.isfinite(r["embed_cosine_unrelated"])
                else "n/a",
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
              "cosine of unrelated texts (exact model)", "retrieval top-1 [95% CI]",
              "pairs better / worse than exact", "McNemar p", "mean rank of true pair",
              "top-1 agrees with exact",
              "more attention FLOPs than exact", "model time ms / exact ms"]  # fmt: skip
    pairs = sorted({int(p) for p in rows["retrieval_pairs"].dropna()})
    note = f"Retrieval over {' / '.join(map(str, pairs))} pairs.\n\n" if pairs else ""
    return note + markdown_table(header, out)
