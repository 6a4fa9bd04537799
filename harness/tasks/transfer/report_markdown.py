"""The transfer section's text: each variant's before / after pair side by side.

Transfer rows come in pairs per variant and knob value: ``stage`` = ``before`` (the untrained
per-layer instances in MiniLM) and ``after`` (the same instances fitted to each layer's softmax
attention on calibration text), both measured on the same held-out text. The table shows, per
pair, the sentence-embedding cosine to the exact model beside its reference (the exact model's
cosine between different held-out passages: what unrelated text scores), the attention output's
relative error per layer (mean over the layers and the worst layer), retrieval top-1 with its
95% interval and the fraction of queries whose best candidate agrees with exact attention; then
what the fit cost (fitted parameters, time, the loss and which loss) and the variant's settings.
A variant that could not be transferred (no trainable parameters, say) is listed with its
reason. Every function takes prepared rows (:func:`harness.analysis.series.prepare`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis.rows import parse_json
from harness.analysis.series import SHAPE_PARAMS, as_mapping
from harness.report.markdown import fmt, markdown_table
from harness.report.sections import task_rows

STAGES: tuple[str, str] = ("before", "after")
#: Numbers read per stage (medians over seeds); ``layer_out_rel_err_max`` is derived.
STAGE_NUMBERS: tuple[str, ...] = (
    "embed_cosine", "embed_cosine_unrelated", "layer_out_rel_err_mean", "layer_out_rel_err_max",
    "retrieval_top1", "retrieval_top1_lo", "retrieval_top1_hi", "retrieval_agree_top1",
    "retrieval_exact_top1", "retrieval_exact_top1_lo", "retrieval_exact_top1_hi",
    "retrieval_pairs", "texts", "calibration_texts", "fit_params", "fit_time_s", "fit_steps",
    "fit_loss_first", "fit_loss_final",
)  # fmt: skip
#: Identity of one before/after pair (several seeds of it are pooled by their median).
PAIR_KEYS: tuple[str, ...] = ("variant", "knob_text", "kv_len", "settings")

INTRO = (
    "Attention transfer: each learnable variant gets one instance per MiniLM layer, fitted to "
    "that layer's softmax attention on calibration text (only the variant's parameters train; "
    "the model is frozen), and the model is measured on held-out text from other pydoc topics "
    "before and after fitting. Unrelated passages: the exact model's mean cosine between "
    "different held-out passages, what an embedding cosine of unrelated text comes to. Layer "
    "output error: relative error of each layer's attention output on the held-out texts' "
    "exact q, k, v (what the output loss minimises), the mean over the "
    "layers and the worst layer. Agreement: the fraction of retrieval queries whose best "
    "candidate is the same as with exact attention."
)


def is_transfer(df: pd.DataFrame) -> pd.Series:
    """Which rows are transfer rows."""
    return task_rows(df, "transfer")


def settings_text(params: Any, knob: Any) -> str:
    """The variant's constructor settings without its knob and the shape (``kv_len``, ...)."""
    shown = {
        k: v
        for k, v in sorted(as_mapping(params).items())
        if k != knob and k not in SHAPE_PARAMS and v is not None
    }
    return ", ".join(f"{k}={fmt(v)}" for k, v in shown.items()) or "defaults"


def knob_text(knob: Any, value: Any) -> str:
    """``k=64``, or ``–`` for a variant without a knob."""
    if not isinstance(knob, str) or not knob or pd.isna(value):
        return "–"
    return f"{knob}={fmt(value)}"


def _worst_layer(value: Any) -> float:
    """The largest per-layer error of a ``layer_out_rel_err`` cell (JSON list), or NaN."""
    errors = parse_json(value)
    if not isinstance(errors, list) or not errors:
        return np.nan
    return float(np.max(np.asarray(errors, dtype=float)))


def transfer_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The measured transfer rows (status ok, a stage) with the pair keys and numbers added."""
    rows = df[is_transfer(df) & (df["status"] == "ok")]
    if "stage" not in rows.columns:
        return rows.iloc[:0]
    rows = rows[rows["stage"].isin(STAGES)]
    if not len(rows):
        return rows
    rows = rows.assign(
        knob_text=[knob_text(k, v) for k, v in zip(rows["knob"], rows["knob_value"])],
        settings=[settings_text(p, k) for p, k in zip(rows["params"], rows["knob"])],
        layer_out_rel_err_max=rows.get("layer_out_rel_err", pd.Series(index=rows.index))
        .map(_worst_layer)
        .astype(float),
    )
    extra = (c for c in (*STAGE_NUMBERS, "fit_loss") if c not in rows)
    rows = rows.reindex(columns=[*rows.columns, *extra])
    for col in (*STAGE_NUMBERS, "knob_value", "kv_len"):
        rows[col] = pd.to_numeric(rows[col], errors="coerce")
    return rows


def transfer_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, knob value, length, settings): each stage's numbers side by side.

    Columns: the :data:`PAIR_KEYS`, ``knob``, ``knob_value``, ``fit_loss`` (the loss the fit
    minimised, or None), ``seeds`` and every
    :data:`STAGE_NUMBERS` column with the suffix ``_before`` and ``_after`` (NaN where that
    stage has no ok row). Sorted by variant, then knob value. Empty when there are no rows.
    """
    rows = transfer_rows(df)
    if not len(rows):
        return pd.DataFrame(columns=[*PAIR_KEYS, "knob", "knob_value", "fit_loss", "seeds"])
    groups = rows.groupby(list(PAIR_KEYS), sort=False, dropna=False)
    out = groups[["knob", "knob_value", "fit_loss"]].first()  # fit_loss: the after row's
    out["seeds"] = groups["seed"].nunique() if "seed" in rows.columns else 1
    for stage in STAGES:
        numbers = rows[rows["stage"] == stage].groupby(list(PAIR_KEYS), dropna=False)[
            list(STAGE_NUMBERS)
        ]
        out = out.join(numbers.median().add_suffix(f"_{stage}"), how="left")
    out = out.reset_index()
    order = sorted(
        range(len(out)),
        key=lambda i: (str(out["variant"][i]), np.nan_to_num(out["knob_value"][i], nan=-1.0),
                       out["kv_len"][i], out["settings"][i]),
    )  # fmt: skip
    return out.iloc[order].reset_index(drop=True)


def _arrow(row: Mapping[str, Any], column: str, digits: int = 3) -> str:
    return f"{fmt(row[f'{column}_before'], digits)} → {fmt(row[f'{column}_after'], digits)}"


def _top1(row: Mapping[str, Any], stage: str) -> str:
    text = fmt(row[f"retrieval_top1_{stage}"])
    low, high = row[f"retrieval_top1_lo_{stage}"], row[f"retrieval_top1_hi_{stage}"]
    if np.isfinite(low) and np.isfinite(high):
        text += f" [{fmt(low)}, {fmt(high)}]"
    return text


def _unrelated(row: Mapping[str, Any]) -> str:
    """The exact model's cosine between different held-out passages (either stage's row)."""
    before, after = row["embed_cosine_unrelated_before"], row["embed_cosine_unrelated_after"]
    return fmt(before if np.isfinite(before) else after)


def _layers(row: Mapping[str, Any], stage: str) -> str:
    mean, worst = row[f"layer_out_rel_err_mean_{stage}"], row[f"layer_out_rel_err_max_{stage}"]
    return f"{fmt(mean)} ({fmt(worst)})" if np.isfinite(worst) else fmt(mean)


def _loss(row: Mapping[str, Any]) -> str:
    first, final = row["fit_loss_first_after"], row["fit_loss_final_after"]
    if not (np.isfinite(first) and np.isfinite(final)):
        return "–"
    steps = f"{fmt(row['fit_steps_after'])} steps"
    which = row.get("fit_loss")
    if isinstance(which, str) and which:  # rows of older runs do not say
        steps += f", {which} loss"
    return f"{fmt(first)} → {fmt(final)} ({steps})"


def pairs_table(pairs: pd.DataFrame) -> str:
    """The before/after table of :func:`transfer_pairs` as markdown."""
    several = pairs["kv_len"].nunique() > 1
    body = []
    for _, r in pairs.iterrows():
        variant = f"{r['variant']} (n={fmt(r['kv_len'])})" if several else str(r["variant"])
        no_knob = r["knob_text"] == "–"
        body.append(
            [
                variant,
                "–" if no_knob else str(r["knob"]),
                "–" if no_knob else fmt(r["knob_value"]),
                _arrow(r, "embed_cosine"),
                _unrelated(r),
                f"{_layers(r, 'before')} → {_layers(r, 'after')}",
                f"{_top1(r, 'before')} → {_top1(r, 'after')}",
                _arrow(r, "retrieval_agree_top1"),
                fmt(r["fit_params_after"]),
                fmt(r["fit_time_s_after"]),
                _loss(r),
                str(r["settings"]),
            ]
        )
    header = ["variant", "knob", "knob value", "embedding cosine before → after",
              "cosine of unrelated passages (exact model)",
              "layer output rel. err before → after (mean (worst layer))",
              "retrieval top-1 [95% CI] before → after", "top-1 agrees with exact before → after",
              "fitted params", "fit time (s)", "fit loss first → final", "settings"]  # fmt: skip
    return markdown_table(header, body)


def _setting_note(pairs: pd.DataFrame) -> str:
    """What the numbers were measured on: texts, lengths, retrieval pairs, exact's top-1."""

    def values(column: str) -> str:
        found = sorted({float(v) for v in pairs[column].dropna()})
        return " / ".join(fmt(v) for v in found) or "–"

    note = (
        f"Held out: {values('texts_before')} texts of {values('kv_len')} tokens; fitted on "
        f"{values('calibration_texts_before')} calibration texts."
    )
    if pairs["retrieval_pairs_before"].notna().any():
        exact = pairs.iloc[0]
        note += (
            f" Retrieval over {values('retrieval_pairs_before')} held-out pairs; exact "
            f"attention's top-1 {fmt(exact['retrieval_exact_top1_before'])} "
            f"[{fmt(exact['retrieval_exact_top1_lo_before'])}, "
            f"{fmt(exact['retrieval_exact_top1_hi_before'])}]."
        )
    if (pairs["seeds"] > 1).any():
        note += " Medians over seeds."
    return note


def not_transferred(df: pd.DataFrame) -> list[str]:
    """One line per transfer point that gave no measurement: status, variant and reason."""
    bad = df[is_transfer(df) & (df["status"] != "ok")]
    lines = []
    for (status, variant, reason), _ in bad.groupby(
        ["status", "variant", "reason"], dropna=False, sort=True
    ):
        why = reason if isinstance(reason, str) else "(no reason recorded)"
        lines.append(f"- {variant}: {status}: {why}")
    return lines


def transfer_markdown(df: pd.DataFrame) -> list[str]:
    """The section's text for one device's rows (empty when there are no transfer rows)."""
    if not is_transfer(df).any():
        return []
    md = [INTRO, ""]
    pairs = transfer_pairs(df)
    if len(pairs):
        md += [_setting_note(pairs), "", pairs_table(pairs), ""]
    left = not_transferred(df)
    if left:
        md += ["Not transferred:", "", *left, ""]
    return md
