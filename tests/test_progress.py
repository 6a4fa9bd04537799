"""Progress bars of the inner loops: a tqdm bar on a terminal, nothing in logs."""

from __future__ import annotations

import io

from tqdm import tqdm

from harness.measure.progress import progress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    items = [0, 1, 2]
    assert progress(items, "seeds") is items


def test_bar_on_a_terminal_lists_every_item(monkeypatch):
    fake = FakeTTY()
    monkeypatch.setattr("sys.stderr", fake)
    bar = progress([0, 1, 2], "performer accuracy seeds")
    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2]
    assert bar.n == 3 and bar.total == 3
    assert "performer accuracy seeds" in fake.getvalue() and "0/3" in fake.getvalue()


def test_single_item_gets_no_bar(monkeypatch):
    monkeypatch.setattr("sys.stderr", FakeTTY())
    assert progress([0], "seeds") == [0]
