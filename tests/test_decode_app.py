"""The decode task through the app and the report: bad settings exit 2 with one line, a tiny
``+experiment=decode`` sweep runs and ``attnbench-report`` draws its section and figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.analysis.rows import read_rows
from harness.analysis.series import prepare
from harness.tasks.decode.report import decode_markdown
from harness.tasks.decode.report_data import crossover, decode_lines, summary
from harness.tasks.decode.report_figures import FIGURES, plot_all

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
APP = "import sys; from harness.app.main import cli; sys.argv[0] = 'attnbench'; cli()"
REPORT = "import sys; from harness.report.build import cli; sys.exit(cli())"
TINY = [
    "heads=4", "head_dim=16", "decode.steps=3", "decode.warmup=1", "decode.model_depth=1",
    "decode.model_mlp_ratio=2", "measure.threads=1",
]  # fmt: skip


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["heads=8", "kv_heads=3"], "attnbench: kv_heads=3 must divide heads=8"),
        (["task=decode", "decode.steps=0"], "attnbench: decode.steps=0 must be an integer >= 1"),
        (
            ["task=decode", "seq_len=64", "decode.cache_len=80"],
            "attnbench: decode.cache_len=80 is shorter than the prompt (kv_len=64) plus the 36 "
            "generated tokens (100)",
        ),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str):
    got = _run(APP, *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert got.returncode == 2, got.stderr
    assert got.stderr.strip() == message
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_tiny_decode_sweep_and_its_report(tmp_path: Path, check_png) -> None:
    sweep = tmp_path / "sweep"
    got = _run(
        APP, "+experiment=decode", "variant=sdpa,linear,nystrom", "seq_len=64,128",
        "kv_heads=4,2", *TINY, f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    rows = read_rows([sweep])
    assert len(rows) == 12 and set(rows["task"]) == {"decode"}
    ok = rows[rows["status"] == "ok"]
    assert sorted(set(ok["variant"])) == ["linear", "sdpa"] and len(ok) == 8
    exact = ok["variant"] == "sdpa"
    assert (ok[exact]["decode_rel_err"] < 1e-4).all() and (ok["state_bytes_measured"] > 0).all()
    ratio = ok[~exact]["decode_rel_err"] / ok[~exact]["forward_rel_err"]
    assert ratio.between(0.67, 1.5).all()  # the linear step is as close as its forward
    grouped = ok[ok["kv_heads"] == 2].set_index(["variant", "kv_len"])["state_bytes"]
    full = ok[ok["kv_heads"] == 4].set_index(["variant", "kv_len"])["state_bytes"]
    assert (full / grouped).round(6).eq(2).all()  # cache and running sums per KV head
    nystrom = rows[rows["variant"] == "nystrom"]
    assert (nystrom["status"] == "unsupported").all()
    assert nystrom["reason"].str.startswith("nystrom:").all()

    out = tmp_path / "report"
    got = _run(REPORT, str(sweep), "--out", str(out), "--no-heatmap")
    assert got.returncode == 0, got.stderr[-3000:]
    text = (out / "report.md").read_text()
    assert "## Decoding: prefill and per-token step" in text
    assert "| sdpa | 128 |" in text and "linear [kv_heads=2]" in text
    for name in FIGURES:
        assert f"![{name}]({name}.png)" in text
        check_png(out / f"{name}.png")
    assert "nystrom" in text.split("## Points that did not run")[1]


# ---------------------------------------------------------------------- report pieces
def _rows() -> pd.DataFrame:
    """Decode rows of a made-up sweep: exact grows linearly, the others stay flat."""
    out = []
    for kv_heads in (8, 2):
        for n in (1024, 2048, 4096, 8192, 16384, 32768):
            for variant, exact, ms, state in (
                ("sdpa", True, 0.02 * n / 1024 * kv_heads / 8 + 0.01, 2 * kv_heads * n * 64 * 4),
                ("linear", False, 0.15, kv_heads * 64 * 65 * 4),
                ("longformer", False, 0.025, 2 * kv_heads * 257 * 64 * 4),
            ):
                read = state
                out.append(
                    dict(
                        task="decode", variant=variant, params={}, exact=exact, status="ok",
                        reason=None, device="cpu", device_name="CPU", host="h", dtype="float32",
                        causal=True, batch=1, heads=8, kv_heads=kv_heads, head_dim=64, q_len=1,
                        kv_len=n, q_tokens=1, token_ms=ms, step_ms=ms, step_iqr_ms=ms / 20,
                        tokens_per_s=1e3 / ms, prefill_ms=n / 100, state_bytes=state,
                        state_bytes_measured=state, step_read_bytes=read,
                        achieved_gbs=read / ms / 1e6, copy_gbs=15.0, bandwidth_fraction=read
                        / ms / 1e6 / 15, decode_rel_err=1e-7, forward_rel_err=1e-7,
                        model_tokens_per_s=200.0, model_attention_share=0.3, point_id=None,
                    )
                )  # fmt: skip
    return prepare(pd.DataFrame(out))


def test_crossover_and_slopes_of_made_up_rows() -> None:
    table = summary(decode_lines(_rows())).set_index("line")
    assert table.loc["sdpa", "slope"] > 0.8 and abs(table.loc["linear", "slope"]) < 1e-9
    # linear (0.15 ms) beats 0.02 n/1024 + 0.01 from n = 7168
    assert table.loc["linear", "crossover_n"] == pytest.approx(7168, rel=0.1)
    assert table.loc["longformer", "crossover"] == "≤ 1024"
    assert table.loc["linear", "speedup"] == pytest.approx((0.02 * 32 + 0.01) / 0.15)
    assert table.loc["sdpa", "crossover"] == "baseline"
    grouped = table.loc["sdpa [kv_heads=2]"]
    assert grouped["baseline"] == "sdpa [kv_heads=2]" and grouped["context"] == 32768
    never = crossover(pd.Series([2.0, 3.0], index=[1, 2]), pd.Series([1.0, 1.0], index=[1, 2]))
    assert never == (None, "> 2")
    md = "\n".join(decode_markdown(_rows()))
    assert "| sdpa | 32768 |" in md and "baseline" in md and "4.3x" in md


def test_decode_figures_draw(tmp_path: Path, check_png) -> None:
    drawn = plot_all(_rows(), tmp_path)
    assert [f.name for f in drawn] == list(FIGURES)
    assert all(f.path is not None for f in drawn), [f.skipped for f in drawn]
    for fig in drawn:
        check_png(fig.path)
    empty = _rows().assign(status="error")
    skipped = plot_all(empty, tmp_path / "none")
    assert all(f.skipped for f in skipped)
    assert np.isfinite(summary(decode_lines(_rows()))["slope"]).all()
