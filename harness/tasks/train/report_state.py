"""One panel of the state-size figure: MQAR accuracy against bytes of recurrent state.

As Zoology plots it (Arora et al. 2023, fig. 2): x is what the model keeps per sequence
(:mod:`harness.tasks.train.state`), y the accuracy after training. A family (a variant over its
knob values) is one line through its arms in order of state size; a variant without a knob one
point; exact attention a star at its whole cache. Points are means over seeds with min–max bars;
a hollow marker is an arm with a seed still improving at the cap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.ticker
import numpy as np
import pandas as pd

from harness.report.style import Style


def _bytes(value: float, _: Any = None) -> str:
    """Tick label: 512 B, 16 KiB, 1 MiB."""
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:g} {unit}"
    return f"{value:g} B"


def draw_state(ax: Any, summary: pd.DataFrame, styles: Mapping[str, Style]) -> set[str]:
    """Draw one setting's arms (``arm_summary`` rows) on ``ax``; returns the families without a
    state size (not drawn)."""
    missing = set()
    for family, arms in summary.groupby("family", sort=True):
        arms = arms[np.isfinite(arms["state_bytes"].astype(float))].sort_values("state_bytes")
        if not len(arms):
            missing.add(str(family))
            continue
        style = styles[family]
        exact = bool(arms["exact"].iloc[0])
        marker = "*" if exact else style.marker
        x, y = arms["state_bytes"].astype(float), arms["value"].astype(float)
        yerr = [y - arms["value_min"].astype(float), arms["value_max"].astype(float) - y]
        ax.errorbar(x, y, yerr=yerr, color=style.color, linestyle="none", capsize=2, linewidth=1)
        if len(arms) > 1:
            ax.plot(x, y, color=style.color, linestyle=style.linestyle, linewidth=1.2)
        late = (arms["not_converged"] > 0).to_numpy()
        size = 11 if exact else 7
        for hollow in (False, True):
            pick = late == hollow
            if not pick.any():
                continue
            ax.plot(
                x[pick],
                y[pick],
                linestyle="none",
                marker=marker,
                markersize=size,
                color=style.color,
                markerfacecolor="white" if hollow else style.color,
                label=f"{family}" + (" (exact: whole cache)" if exact else ""),
            )
        if len(arms) > 1:
            for _, r in arms.iterrows():
                ax.annotate(
                    f"{r['knob_value']:g}",
                    (r["state_bytes"], r["value"]),
                    fontsize=6.5,
                    xytext=(3, -9),
                    textcoords="offset points",
                    color=style.color,
                )
    if (summary["not_converged"] > 0).any():
        ax.plot([], [], linestyle="none", marker="o", color="0.3", markerfacecolor="white",
                label="hollow: a seed still improving at the cap")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_bytes))
    ax.set_ylim(-0.02, 1.05)
    return missing
