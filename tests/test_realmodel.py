"""Real-model fidelity, its heatmap data and the ``minilm`` inputs: needs ``attnbench[real]``.

Short texts (tens of tokens) keep the file fast; the model is 22M parameters.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.real, pytest.mark.usefixtures("one_thread")]
pytest.importorskip("transformers")

from harness.minilm import model as minilm  # noqa: E402

_missing = minilm.unavailable_reason()
if _missing:
    pytest.skip(_missing, allow_module_level=True)

from minilm_points import minilm_point  # noqa: E402

import variants  # noqa: E402
from harness.analysis.rows import COLUMNS, complete_row  # noqa: E402
from harness.app.main import CONF_DIR  # noqa: E402
from harness.measure.accuracy import effective_attention  # noqa: E402
from harness.measure.config import ConfigError  # noqa: E402
from harness.minilm import embed as embed_module  # noqa: E402
from harness.minilm.adapter import VariantUnsupported  # noqa: E402
from harness.minilm.capture import minilm_qkv, sentence_qkv  # noqa: E402
from harness.minilm.embed import Embeddings, embed, paired_timed_embed  # noqa: E402
from harness.minilm.limits import NUM_LAYERS  # noqa: E402
from harness.minilm.retrieval import (  # noqa: E402
    mcnemar_p,
    retrieval_check,
    retrieval_pairs,
    wilson_interval,
)
from harness.minilm.texts import pydoc_texts  # noqa: E402
from harness.tasks.realmodel.columns import work_columns  # noqa: E402
from harness.tasks.realmodel.config import RealmodelConfig  # noqa: E402
from harness.tasks.realmodel.heatmap import (  # noqa: E402
    HEATMAP_FILE,
    attention_heatmap_data,
    variant_heatmap,
)
from harness.tasks.realmodel.measure import measure  # noqa: E402
from variants.full import FullAttention  # noqa: E402

LENGTHS = [12, 40, 24]  # mixed, so that one batch is padded


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return pydoc_texts(3, min_tokens=max(LENGTHS), seed=0)


@pytest.fixture(scope="module")
def stock(texts):
    return embed(texts, None, lengths=LENGTHS, batch_size=3)


def _cos_distance(a: Embeddings, b: Embeddings) -> float:
    return float(1 - (a.embeddings.double() * b.embeddings.double()).sum(-1).min())


def test_texts_are_real_english_and_deterministic(texts) -> None:
    assert texts == pydoc_texts(3, min_tokens=max(LENGTHS), seed=0)
    assert all(len(t.split()) >= 8 and t.endswith(".") for t in texts)
    assert pydoc_texts(2, min_tokens=512)  # enough material for 512-token points


def test_one_cached_model_per_device_and_unpadded_batches_run(texts) -> None:
    # load_model() and load_model("cpu") were two models: checks on one missed the other
    assert (
        minilm.load_model() is minilm.load_model("cpu") is minilm.load_model(torch.device("cpu"))
    )
    # an unpadded batch hands the variant the model's transposed q, k, v views as they are;
    # a block-sparse kernel's .view() needs contiguous inputs (16 tokens: whole blocks)
    local = embed(texts[:2], variants.create("local", window=4), lengths=16, batch_size=2)
    assert local.lengths == [16, 16] and bool(torch.isfinite(local.embeddings).all())


def test_sdpa_adapter_reproduces_stock_embeddings(texts, stock) -> None:
    assert stock.lengths == LENGTHS
    adapted = embed(texts, variants.create("sdpa"), lengths=LENGTHS, batch_size=3)
    assert _cos_distance(stock, adapted) < 1e-5
    # the shared cached model is left with its own implementation
    assert minilm.load_model().config._attn_implementation == "sdpa"


@pytest.mark.skipif(
    importlib.util.find_spec("variants.longformer") is None, reason="variants.longformer absent"
)
def test_longformer_covering_window_reproduces_stock(texts, stock) -> None:
    n = max(LENGTHS)
    longformer = variants.create("longformer", window=n, num_global=0, kv_len=n, head_dim=32)
    adapted = embed(texts, longformer, lengths=LENGTHS, batch_size=3)
    assert _cos_distance(stock, adapted) < 1e-5


@pytest.mark.parametrize(
    "make",
    [
        lambda: variants.create("full"),
        lambda: variants.create("linformer", kv_len=64, head_dim=32, k=8, seed=0),
    ],
    ids=["full", "linformer"],
)
def test_padding_never_changes_a_real_token(texts, make) -> None:
    variant = make()
    alone = embed(texts[:1], variant, lengths=[12], batch_size=1)
    padded = embed(texts, variant, lengths=[12, 40, 24], batch_size=3)
    assert padded.lengths[0] == 12
    for layer in range(len(alone.hidden_states)):
        torch.testing.assert_close(
            padded.hidden_states[layer][0], alone.hidden_states[layer][0], atol=1e-5, rtol=1e-5
        )


class _CausalOnly(FullAttention):
    """A variant that can only run causal attention (like a decoder-only kernel)."""

    def not_supported_reasons(self, q, k, v, causal):
        return [] if causal else ["causal_only: needs causal=True"]


@pytest.mark.parametrize(
    "factory, words",
    [
        (lambda seed: variants.create("linformer", kv_len=16, head_dim=32, k=8, seed=seed),
         "kv_len=16"),
        (lambda seed: _CausalOnly(), "causal"),
    ],
    ids=["linformer_too_short", "causal_only"],
)  # fmt: skip
def test_unsupported_variant_is_reported_not_crashed(texts, factory, words) -> None:
    with pytest.raises(VariantUnsupported, match=words):
        embed(texts, factory(0), lengths=LENGTHS, batch_size=3)
    point = minilm_point("realmodel", _CausalOnly, lengths=[32], texts_per_length=1)
    (row,) = measure(point, factory)
    assert row["status"] == "unsupported" and words in row["reason"]
    assert "retrieval_top1" not in row
    assert minilm.load_model().config._attn_implementation == "sdpa"


def test_measure_realmodel_point_row() -> None:
    point = minilm_point("realmodel", "sdpa", lengths=[16, 32], texts_per_length=2,
                         batch_size=2, retrieval_pairs=200)  # fmt: skip
    (row,) = measure(point, lambda seed: variants.create("sdpa"))
    assert row["status"] == "ok", row["reason"]
    # the row says what the variant is without its code
    assert row["exact"] is True and row["randomized"] is False
    assert row["knob"] is None and row["knob_value"] is None
    assert row["params"] == variants.create("sdpa").config()  # a mapping, not JSON text
    assert row["inputs_params"] == {"lengths": [16, 32], "texts_per_length": 2}
    assert row["task"] == "realmodel" and row["q_len"] == 32 and row["texts"] == 4
    assert row["embed_cosine"] > 1 - 1e-5 and row["embed_cosine_min"] > 1 - 1e-5
    errs = json.loads(row["hidden_rel_err"])
    assert len(errs) == NUM_LAYERS and max(errs) < 1e-4
    assert set(json.loads(row["embed_cosine_by_length"])) == {"16", "32"}
    # beside the cosine, its reference: the exact model's cosine between different texts
    from harness.minilm.point import unrelated_cosine
    from harness.tasks.realmodel.measure import realmodel_texts

    texts, lengths = realmodel_texts([16, 32], 2, seed=0)
    reference = unrelated_cosine(embed(texts, None, lengths=lengths).embeddings, lengths)
    assert row["embed_cosine_unrelated"] == pytest.approx(reference, abs=1e-6)
    assert 0 < row["embed_cosine_unrelated"] < 0.9
    assert row["time_ms"] > 0 and row["exact_time_ms"] > 0
    # exact and variant timed in the same loop, >= 10 rounds, each with its spread
    assert row["repeats"] >= 10 and row["exact_time_iqr_ms"] >= 0 and row["time_iqr_ms"] >= 0
    assert row["time_ratio"] > 0
    # attention FLOPs over the whole model's time is no rate: no tflops on whole-model rows
    assert row.get("tflops") is None and row["flops"] == row["exact_flops"] > 0
    assert row["work_exceeds_exact"] is None  # an exact variant is no approximation
    # exact attention retrieves exactly what the stock model retrieves, over 200 pairs
    assert row["retrieval_pairs"] == 200 and row["retrieval_agree_top1"] == 1.0
    assert row["retrieval_top1"] == row["retrieval_exact_top1"] > 0
    assert row["retrieval_top1_lo"] < row["retrieval_top1"] < row["retrieval_top1_hi"]
    assert row["retrieval_top1_hi"] - row["retrieval_top1_lo"] < 0.15  # 32 pairs: ~0.3 wide
    assert row["retrieval_better"] == row["retrieval_worse"] == 0
    assert row["retrieval_mcnemar_p"] == 1.0
    assert row["retrieval_mean_rank"] >= 1
    full = complete_row(row)
    assert list(full)[: len(COLUMNS)] == COLUMNS and full["torch"]


class _NaNBeyond32(FullAttention):
    """Exact attention that gives NaN for texts of more than 32 tokens."""

    def forward(self, q, k, v, causal=False):
        out = super().forward(q, k, v, causal)
        return out if k.shape[-2] <= 32 else torch.full_like(out, math.nan)


def test_non_finite_retrieval_embeddings_make_the_row_nan_naming_them() -> None:
    """The evaluation texts (16 tokens) embed exactly; some retrieval texts give NaN: the row
    is no retrieval result but a ``nan`` row saying whose embeddings and which lengths."""
    point = minilm_point("realmodel", "full", lengths=[16], texts_per_length=2,
                         batch_size=2, retrieval_pairs=200)  # fmt: skip
    (row,) = measure(point, lambda seed: _NaNBeyond32())
    assert row["status"] == "nan" and row["embed_cosine"] > 1 - 1e-5
    assert re.fullmatch(
        r"retrieval check: full gave NaN/Inf embeddings for \d+ of 400 retrieval texts "
        r"\(3[3-9]-\d+ tokens\)",
        row["reason"],
    ), row["reason"]
    assert row.get("retrieval_top1") is None


def test_minilm_qkv_shapes_and_errors() -> None:
    q, k, v = minilm_qkv(2, 3, 24, 24, 32, torch.float64, "cpu", seed=0, layer=1, head=2)
    assert q.shape == k.shape == v.shape == (2, 3, 24, 32) and q.dtype == torch.float64
    assert not torch.equal(q[0], q[1])  # different passages per batch item
    q_all, _, _ = minilm_qkv(2, 12, 24, 24, 32, "float32", "cpu", seed=0, layer=1)
    torch.testing.assert_close(q_all[:, 2:5].double(), q)
    text = pydoc_texts(1, min_tokens=24)[0]
    q1, k1, v1, tokens = sentence_qkv(text, layer=1, head=2)
    qt, _, _ = minilm_qkv(1, 1, len(tokens), len(tokens), 32, "float32", "cpu", 0,
                                 layer=1, head=2, text=text)  # fmt: skip
    torch.testing.assert_close(qt, q1)
    bad = [
        (dict(kv_len=32), "kv_len"),
        (dict(head_dim=64), "head_dim"),
        (dict(q_len=513, kv_len=513), "q_len"),
        (dict(head=11, heads=2), "heads"),
        (dict(layer=6), "layer"),
    ]
    for override, field in bad:
        args = dict(batch=1, heads=1, q_len=24, kv_len=24, head_dim=32, dtype="float32",
                    device="cpu", seed=0) | override  # fmt: skip
        with pytest.raises(ValueError, match=field):
            minilm_qkv(**args)


def test_retrieval_check_exact_finds_true_pairs() -> None:
    table = retrieval_check({"full": variants.create("full")}, n_pairs=16)
    assert list(table["variant"]) == ["exact", "full"]
    exact = table.iloc[0]
    assert exact["top1"] >= 0.5 and exact["mean_rank"] < 4
    assert table.iloc[1]["top1"] == exact["top1"] and table.iloc[1]["agree_top1"] == 1.0


def test_retrieval_check_separates_a_poor_approximation() -> None:
    # A 2-token window keeps almost nothing of the context: it must retrieve worse than exact
    # and disagree with it on some queries (the check would be useless if it could not tell).
    table = retrieval_check({"local2": variants.create("local", window=2)}, n_pairs=16)
    exact, local = table.iloc[0], table.iloc[1]
    assert local["status"] == "ok" and local["embed_cosine"] < 0.99
    assert local["agree_top1"] < 1.0 and local["mean_rank"] >= exact["mean_rank"]
    # the paired comparison: the discordant queries account for the whole top-1 difference
    n = 16
    assert local["better"] - local["worse"] == round((local["top1"] - exact["top1"]) * n)
    assert local["better"] + local["worse"] > 0
    assert local["mcnemar_p"] == mcnemar_p(int(local["better"]), int(local["worse"]))
    assert exact["better"] == exact["worse"] == 0 and exact["mcnemar_p"] == 1.0
    for r in (exact, local):
        assert (r["top1_lo"], r["top1_hi"]) == wilson_interval(round(r["top1"] * n), n)


def test_retrieval_pairs_are_200_plus_seeded_and_nested() -> None:
    pairs = retrieval_pairs(200, seed=0)
    assert len(pairs) == 200 and pairs == retrieval_pairs(200, seed=0)
    assert retrieval_pairs(200, seed=1) != pairs
    assert retrieval_pairs(300, seed=0)[:200] == pairs  # more pairs extend, never reshuffle
    # every query and every candidate once: no query has two true answers
    assert len({q for q, _ in pairs}) == len({d for _, d in pairs}) == 200
    assert all(q.endswith(".") and d.endswith(".") for q, d in pairs)
    with pytest.raises(ValueError, match="n_pairs"):
        retrieval_pairs(0)


def test_wilson_interval_and_mcnemar() -> None:
    # issue 13: longformer 3 discordant queries in its favour and 0 against over 32 pairs
    assert mcnemar_p(3, 0) == pytest.approx(0.25) and mcnemar_p(0, 3) == pytest.approx(0.25)
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 15) == pytest.approx(2 * sum(math.comb(20, i) for i in range(6)) / 2**20)
    z = 1.959963984540054  # the 97.5% normal quantile: a two-sided 95% interval
    for hits, n in [(26, 32), (90, 200), (0, 200), (200, 200)]:
        p = hits / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        low, high = wilson_interval(hits, n)
        assert low == pytest.approx(max(0.0, centre - half), abs=1e-12)
        assert high == pytest.approx(min(1.0, centre + half), abs=1e-12)


def test_realmodel_config_and_preset_need_200_pairs_and_10_rounds() -> None:
    for override, field in [({"retrieval_pairs": 32}, "realmodel.retrieval_pairs=32"),
                            ({"retrieval_pairs": 5}, "realmodel.retrieval_pairs=5"),
                            ({"repeats": 3}, "realmodel.repeats=3")]:  # fmt: skip
        with pytest.raises(ConfigError, match=field):
            RealmodelConfig(**override)
    assert RealmodelConfig(retrieval_pairs=0).retrieval_pairs == 0
    defaults = RealmodelConfig()
    assert defaults.retrieval_pairs >= 200 and defaults.repeats >= 10
    from omegaconf import OmegaConf

    preset = Path(CONF_DIR) / "experiment" / "realmodel.yaml"
    block = OmegaConf.load(preset).realmodel
    assert block.retrieval_pairs >= 200 and block.repeats >= 10


def test_paired_timing_interleaves_exact_and_variant(texts, stock, monkeypatch) -> None:
    seen: list[str] = []
    model = minilm.load_model()

    def fake_time_once_ms(fn, device):  # each pass's time is its position in the loop
        seen.append(model.config._attn_implementation)
        fn()
        return float(len(seen))

    monkeypatch.setattr(embed_module, "time_once_ms", fake_time_once_ms)
    local = variants.create("local", window=4)
    exact, approx, exact_time, timing = paired_timed_embed(
        texts, local, lengths=LENGTHS, batch_size=3, device="cpu", repeats=10
    )
    # warm-up round, then exact, variant, exact, variant, ...: one loop, same moments
    assert seen[0::2] == ["sdpa"] * 11 and all(s.startswith("attnbench_local") for s in seen[1::2])
    assert exact_time["times_ms"] == [float(i) for i in range(3, 23, 2)]
    assert timing["times_ms"] == [float(i) for i in range(4, 24, 2)]
    assert exact_time["repeats"] == timing["repeats"] == 10 and exact_time["time_ms"] == 12.0
    assert _cos_distance(stock, exact) < 1e-6  # the exact side is the stock model
    assert _cos_distance(stock, approx) > 1e-4  # the variant side ran the 4-token window
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="repeats"):
        paired_timed_embed(texts, local, lengths=LENGTHS, batch_size=3, device="cpu", repeats=3)


def _tiny_row(name: str, **params) -> dict:
    point = minilm_point("realmodel", name, params, lengths=[16, 32], texts_per_length=1,
                         retrieval_pairs=0, heatmap=False)  # fmt: skip
    (row,) = measure(point, lambda seed: variants.create(name, kv_len=32, head_dim=32, **params))
    assert row["status"] == "ok", row["reason"]
    return row


def test_work_exceeds_exact_flags_nystrom_with_many_landmarks() -> None:
    # 16 landmarks for texts of 16 and 32 tokens: at least half the tokens, more work than exact
    row = _tiny_row("nystrom", num_landmarks=16)
    assert row["work_exceeds_exact"] is True and row["flops"] >= row["exact_flops"]
    assert "work_exceeds_exact" in row["notes"] and row.get("tflops") is None
    few = work_columns(variants.create("nystrom", num_landmarks=4), [64, 64])
    assert few["work_exceeds_exact"] is False and few["flops"] < few["exact_flops"]


@pytest.mark.skipif(
    importlib.util.find_spec("variants.longformer") is None, reason="variants.longformer absent"
)
def test_longformer_row_records_the_backend_that_ran() -> None:
    row = _tiny_row("longformer", window=4)
    assert row["params"]["resolved_backend"] == "chunked"  # CPU: auto resolves to chunked


def test_attention_heatmap_data() -> None:
    full = variants.create("full")
    data = attention_heatmap_data(variants={"full": full})
    tokens, exact = data["tokens"], torch.tensor(data["exact"], dtype=torch.float64)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "cat" in tokens
    n = len(tokens)
    (panel,) = data["panels"]
    mat = torch.tensor(panel["matrix"], dtype=torch.float64)
    assert exact.shape == (n, n) and mat.shape == (n, n)
    assert (exact.sum(-1) - 1).abs().max() < 1e-9
    assert (mat - exact).abs().max() < 1e-6
    assert panel["variant"] == "full" and panel["label"] == "full" and data["skipped"] == []
    short = variants.create("linformer", kv_len=4, head_dim=32, k=2)
    data = attention_heatmap_data(variants={"short": short})
    assert data["panels"] == []
    (skipped,) = data["skipped"]
    assert skipped["variant"] == "linformer" and "linformer" in skipped["reason"]


class _CausalOnlyApproximation(_CausalOnly):
    """An approximate variant that cannot run the (bidirectional) heatmap sentence."""

    name = "causal_only"
    exact = False


def test_variant_heatmap_panels_name_their_settings() -> None:
    labels = [
        panel["label"]
        for cls in (variants.get_class(name) for name in ("full", "longformer", "performer"))
        for panel in variant_heatmap(cls)["panels"]
    ]
    # an exact variant draws no panel; the others name their small heatmap settings
    assert labels == ["longformer (window=2, num_global=1)", "performer (nb_features=32)"]
    data = variant_heatmap(_CausalOnlyApproximation)
    assert data["panels"] == []
    assert data["skipped"] == [
        {"variant": "causal_only", "reason": "causal_only: needs causal=True"}
    ]


def test_realmodel_job_writes_heatmap_json(tmp_path) -> None:
    point = minilm_point("realmodel", "local", {"window": 8}, lengths=[16], texts_per_length=1,
                         retrieval_pairs=0)  # fmt: skip
    (row,) = measure(point, lambda seed: variants.create("local", window=8), out_dir=tmp_path)
    assert row["status"] == "ok", row["reason"]
    assert row["knob"] == "window" and row["knob_value"] == 8 and row["exact"] is False
    data = json.loads((tmp_path / HEATMAP_FILE).read_text())
    assert set(data) >= {"sentence", "layer", "head", "tokens", "exact", "panels"}
    assert (data["sentence"], data["layer"], data["head"]) == ("The cat sat on the mat.", 0, 0)
    n = len(data["tokens"])
    exact = torch.tensor(data["exact"], dtype=torch.float64)  # (N, N)
    assert exact.shape == (n, n) and (exact.sum(-1) - 1).abs().max() < 1e-9
    (panel,) = data["panels"]
    assert set(panel) == {"variant", "label", "matrix"}
    assert panel["variant"] == "local" and panel["label"] == "local (window=2)"
    # the panel is the heatmap-size variant's effective matrix on the sentence's q, k
    q, k, _, tokens = sentence_qkv(data["sentence"], 0, 0)  # (1, 1, N, 32)
    assert tokens == data["tokens"]
    local = variants.create("local", window=2)
    expected = effective_attention(local, q.double(), k.double(), causal=False)[0, 0]
    torch.testing.assert_close(torch.tensor(panel["matrix"], dtype=torch.float64), expected)
    assert not torch.allclose(expected, exact)  # a 2-token window is not the exact matrix
    # switched off: no file
    point.task_cfg.heatmap = False
    (tmp_path / HEATMAP_FILE).unlink()
    measure(point, lambda seed: variants.create("local"), out_dir=tmp_path)
    assert not (tmp_path / HEATMAP_FILE).exists()
