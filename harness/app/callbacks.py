"""Hydra callbacks of a sweep: count the jobs at the start, aggregate and report at the end.

``on_multirun_start`` counts the points of a basic-sweeper grid so that each job can print
``[i/total]``. ``on_multirun_end`` gathers every job's ``rows.jsonl`` below the sweep folder
into ``results.csv`` (and ``results.parquet`` when pyarrow is installed), runs the report, and
prints the status counts; a sweep in which no point ran is reported with its reasons counted and
makes ``attnbench`` exit non-zero.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from harness.analysis.rows import RESULTS_CSV, flat_frame, read_rows

#: Summary of the last sweep in this process (read by ``harness.app.main.cli`` for its exit code).
LAST_SWEEP: dict[str, Any] | None = None


def count_jobs(config: DictConfig) -> int | None:
    """Number of jobs the basic sweeper will launch (product of the sweep lists), if known."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
        params += list(config.hydra.overrides.task)
        parsed = OverridesParser.create().parse_overrides(params)
        by_key: dict[str, int] = {}
        for ov in parsed:
            n = len(list(ov.sweep_iterator())) if ov.is_sweep_override() else 1
            by_key[ov.get_key_element()] = n  # later overrides replace earlier ones
        total = 1
        for n in by_key.values():
            total *= n
        return total
    except Exception:  # a count is a nicety, never a failure
        return None


def aggregate(sweep_dir: Path) -> Any:
    """Write results.csv (and results.parquet) at the sweep root; returns the DataFrame.

    Both files hold mappings (``params``) as JSON text (:func:`harness.analysis.rows.flat_frame`).
    Parquet needs one type per column: a column mixing types (``knob_value``: ints and strings)
    is stored there as text.
    """
    df = read_rows([sweep_dir])
    if not len(df):
        return df
    flat = flat_frame(df)
    tmp = sweep_dir / ".results.csv.tmp"
    flat.to_csv(tmp, index=False)
    os.replace(tmp, sweep_dir / RESULTS_CSV)
    if importlib.util.find_spec("pyarrow") is not None:  # the attnbench[parquet] extra
        tmp = sweep_dir / ".results.parquet.tmp"
        text = {c: "string" for c in flat.columns if len(set(map(type, flat[c].dropna()))) > 1}
        flat.astype(text).to_parquet(tmp, index=False)
        os.replace(tmp, sweep_dir / "results.parquet")
    return df


class SweepCallback(Callback):
    """Counts jobs at the start of a multirun; aggregates and reports at its end."""

    def __init__(self, report: bool = True) -> None:
        self.report = report

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        total = count_jobs(config)
        if total:
            os.environ["ATTNBENCH_SWEEP_TOTAL"] = str(total)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global LAST_SWEEP
        sweep_dir = Path(OmegaConf.select(config, "hydra.sweep.dir"))
        df = aggregate(sweep_dir)
        counts = Counter(df["status"]) if len(df) else Counter()
        LAST_SWEEP = {"dir": str(sweep_dir), "rows": len(df), "counts": dict(counts)}
        if not len(df):
            print(f"attnbench: the sweep in {sweep_dir} wrote no rows", file=sys.stderr)
            LAST_SWEEP["failed_all"] = True
            return
        summary = ", ".join(f"{n} {s}" for s, n in counts.most_common())
        print(f"attnbench: {len(df)} rows in {sweep_dir / RESULTS_CSV} ({summary})")
        if counts.get("ok", 0) == 0:
            reasons = Counter(f"{r.status}: {r.reason}" for r in df.itertuples())
            print("attnbench: no point of this sweep ran; reasons:", file=sys.stderr)
            for reason, n in reasons.most_common():
                print(f"  {n} x {reason}", file=sys.stderr)
            LAST_SWEEP["failed_all"] = True
        if self.report and counts.get("ok", 0):
            try:
                from harness.report.build import build_report

                path = build_report([sweep_dir], sweep_dir)
                print(f"attnbench: report in {path}")
            except Exception as exc:  # the rows are safe; say why no report
                warnings.warn(f"report failed: {type(exc).__name__}: {exc}", stacklevel=1)
