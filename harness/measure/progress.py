"""Progress bars of the inner loops: a ``tqdm`` bar on a terminal, nothing in logs."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress(items: list, desc: str) -> Any:
    """``items`` wrapped in a tqdm bar on a terminal (stderr), unchanged otherwise.

    In logs and under launchers nothing is printed (each point's one summary line comes from
    :mod:`harness.app.main`); a single item gets no bar.
    """
    if len(items) < 2 or not sys.stderr.isatty():
        return items
    return tqdm(items, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
