"""Reading rows back: corrupt lines named and skipped, params parsed once, repeats removed."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from harness.analysis.rows import (
    COLUMNS,
    deduplicate,
    flat_frame,
    load_row_file,
    parse_params,
    point_ids,
    read_rows,
    write_rows,
)


def _row(point_id: str, time: str = "2026-01-01T00:00:00", **extra) -> dict:
    return {"point_id": point_id, "variant": "local", "pass": "fwd", "status": "ok",
            "kv_len": 256, "params": {"window": 8}, "time": time, **extra}  # fmt: skip


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    """A rows.jsonl whose lines 2 (cut short) and 4 (not an object) are corrupt."""
    path = tmp_path / "job" / "rows.jsonl"
    path.parent.mkdir()
    lines = [json.dumps(_row("a")), '{"point_id": "b", "variant"', json.dumps(_row("c")), "[1, 2]"]
    path.write_text("\n".join(lines) + "\n\n")
    return path


def test_corrupt_lines_are_named_and_the_valid_rows_kept(damaged: Path) -> None:
    with pytest.warns(UserWarning) as caught:
        rows = load_row_file(damaged)
    assert [r["point_id"] for r in rows] == ["a", "c"]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert messages[0].startswith(f"{damaged}:2: not valid JSON")
    assert messages[1].startswith(f"{damaged}:4: a row must be a JSON object")


def test_read_rows_keeps_the_valid_rows_of_a_damaged_file(damaged: Path) -> None:
    write_rows(damaged.parent.parent / "other" / "rows.jsonl", [_row("d")])
    with pytest.warns(UserWarning, match=r"rows\.jsonl:[24]"):
        df = read_rows([damaged.parent.parent])
    assert sorted(df["point_id"]) == ["a", "c", "d"]
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert df["params"].tolist() == [{"window": 8}] * 3


def test_unreadable_file_is_named_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xff\xfe not text")
    with pytest.warns(UserWarning, match="cannot read rows"):
        assert load_row_file(path) == []


def test_point_ids_use_the_tolerant_reader(damaged: Path) -> None:
    other = damaged.parent.parent / "other"
    write_rows(other / "rows.jsonl", [_row("d"), {"variant": "full"}])  # no point_id: ignored
    with pytest.warns(UserWarning, match=r"rows\.jsonl:[24]"):
        assert point_ids([damaged.parent.parent]) == {"a", "c", "d"}
    assert point_ids([damaged.parent.parent], exclude=damaged.parent) == {"d"}


def test_deduplicate_keeps_the_newest_row_of_a_point() -> None:
    df = pd.DataFrame(
        [
            _row("a", "2026-01-02T00:00:00", time_ms=2.0),
            _row("a", "2026-01-01T00:00:00", time_ms=1.0),
            _row("a", "2026-01-01T00:00:00", time_ms=3.0, **{"pass": "bwd"}),
            _row(None, time_ms=4.0),
            _row(None, time_ms=5.0),
        ]
    )
    out = deduplicate(df)
    assert sorted(out["time_ms"]) == [2.0, 3.0, 4.0, 5.0]  # rows without point_id all kept
    assert list(out["time"]) == sorted(out["time"])  # oldest first


def test_csv_params_come_back_as_the_same_mappings(tmp_path: Path) -> None:
    rows = [
        _row("a", inputs_params={"temperature": 2.0}, seeds=[0, 1]),
        _row("b", params={"window": 16, "backend": "auto"}, exact=False, knob="window"),
    ]
    write_rows(tmp_path / "sweep" / "rows.jsonl", rows)
    from_jsonl = read_rows([tmp_path / "sweep"])
    flat = flat_frame(from_jsonl)
    assert flat["params"].tolist() == ['{"window": 8}', '{"backend": "auto", "window": 16}']
    assert flat["seeds"].iloc[0] == "[0, 1]"
    flat.to_csv(tmp_path / "results.csv", index=False)
    from_csv = read_rows([tmp_path / "results.csv"])
    assert from_csv["params"].tolist() == from_jsonl["params"].tolist()
    assert from_csv["inputs_params"].tolist() == [{"temperature": 2.0}, {}]


@pytest.mark.parametrize(
    "value, expected",
    [({"k": 1}, {"k": 1}), ('{"k": 1}', {"k": 1}), ("[1]", {}), ("nonsense", {}), (None, {})],
)
def test_parse_params(value, expected) -> None:
    assert parse_params(value) == expected
