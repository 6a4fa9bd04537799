"""Attention transfer: fitting learnable variants to MiniLM's attention, measured held out.

Needs the ``attnbench[real]`` extra (the pretrained model); skipped without it. The settings
are small (short texts, few steps, one thread) so that each fit takes seconds.
"""

from __future__ import annotations

import json

import pytest
import torch
from minilm_points import minilm_point

from harness.measure.config import ConfigError
from harness.minilm.model import unavailable_reason
from harness.tasks.transfer.config import TransferConfig
from variants.base import AttentionVariant

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]

#: A fit that runs in seconds: short texts, no retrieval, few held-out texts.
SMALL = {"eval_texts": 8, "retrieval_pairs": 0, "batch_size": 8, "lr": 0.01, "save": True}


def _run(variant: str, params: dict, kv_len: int, out_dir=None, **transfer) -> list[dict]:
    """The rows of a transfer point whose texts are ``kv_len`` tokens long."""
    from harness.tasks.transfer.measure import measure

    point = minilm_point("transfer", variant, params, kv_len=kv_len, **transfer)
    return measure(point, point.factory(), out_dir=out_dir)


@pytest.mark.parametrize(
    "variant, params, kv_len, setting",
    [
        # k=64 of 128 keys: a real compression
        ("linformer", {"k": 64}, 128, {"calibration_texts": 32, "steps": 100}),
        # 64 features over 32 tokens; W is 32 x 32 per head
        ("hedgehog", {}, 32, {"calibration_texts": 128, "steps": 150}),
    ],
)
def test_transfer_halves_the_held_out_layer_error(
    one_thread, tmp_path, variant, params, kv_len, setting
):
    rows = _run(variant, params, kv_len, out_dir=tmp_path, **(SMALL | setting))
    before, after = rows
    assert [r["stage"] for r in rows] == ["before", "after"]
    assert [r["status"] for r in rows] == ["ok", "ok"], [r.get("reason") for r in rows]
    assert (before["trained"], after["trained"]) == (False, True)
    assert after["layer_out_rel_err_mean"] * 2 <= before["layer_out_rel_err_mean"], rows
    assert after["embed_cosine"] > before["embed_cosine"]
    assert before["fit_params"] == after["fit_params"] > 0
    # hedgehog has attention weights to fit (the default loss); linformer gets the output loss
    assert after["fit_loss"] == {"hedgehog": "attention", "linformer": "output"}[variant]
    # the cosine's reference: exact MiniLM between different held-out passages, both stages
    assert before["embed_cosine_unrelated"] == after["embed_cosine_unrelated"]
    assert 0 < after["embed_cosine_unrelated"] < 0.9
    curve = json.loads(after["fit_loss_curve"])
    assert curve[-1] < curve[0] and after["fit_time_s"] > 0
    assert after["fit_steps"] == setting["steps"]
    if variant == "linformer":
        assert after["params"]["init"] == "learned"  # transfer.learnable made it trainable

    # the saved fit reproduces the fitted model's held-out errors
    from harness.minilm.layerwise import load_fit
    from harness.tasks.transfer.evaluate import exact_measures, layer_errors
    from harness.tasks.transfer.texts import transfer_texts

    fitted = load_fit(tmp_path / after["fit_file"])
    knob = after["knob_value"] or "default"
    assert fitted.trained and after["fit_file"] == f"transfer_{variant}_{knob}.pt"
    cfg = TransferConfig(**(SMALL | setting))
    texts = transfer_texts(kv_len, cfg.calibration_texts, cfg.eval_texts, 0)
    errors = layer_errors(fitted, exact_measures(texts, kv_len, cfg.eval_batch_size, "cpu")[1], 8)
    assert errors == pytest.approx(json.loads(after["layer_out_rel_err"]), rel=1e-5)


def test_variant_without_parameters_is_not_transferable() -> None:
    rows = _run("nystrom", {"num_landmarks": 8}, 32)
    assert len(rows) == 1
    assert rows[0]["status"] == "unsupported"
    assert rows[0]["reason"] == "not transferable: no trainable parameters"
    assert rows[0]["task"] == "transfer" and rows[0]["variant"] == "nystrom"


def test_bad_transfer_settings_are_refused_naming_the_field() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from harness.app.main import CONF_DIR
    from harness.app.point import Point

    with pytest.raises(ConfigError, match=r"^transfer\.steps=0 "):
        TransferConfig(steps=0)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=transfer", "+transfer.bogus=1"])
    with pytest.raises(ConfigError, match="transfer.bogus"):
        Point.from_cfg(cfg)
    # texts longer than the model's 512 positions: an error row naming the length
    (row,) = _run("hedgehog", {}, 600)
    assert row["status"] == "error" and "kv_len=600" in row["reason"]


def test_no_evaluation_text_is_seen_in_fitting(monkeypatch) -> None:
    """Every text the fitted layers were trained on is a calibration text, and no held-out
    passage, paragraph or retrieval half occurs in any of them."""
    import harness.tasks.transfer.measure as transfer
    from harness.minilm.texts import pydoc_paragraphs
    from harness.tasks.transfer.texts import transfer_texts

    captured: dict[int, list[str]] = {}
    fitted_on: list[int] = []
    real_capture, real_fit = transfer.capture_layers, transfer.fit_layer

    def capture(texts, *args, **kwargs):
        layers = real_capture(texts, *args, **kwargs)
        captured.update({id(layer): list(texts) for layer in layers})
        return layers

    def fit(variant, data, **kwargs):
        fitted_on.append(id(data))
        return real_fit(variant, data, **kwargs)

    monkeypatch.setattr(transfer, "capture_layers", capture)
    monkeypatch.setattr(transfer, "fit_layer", fit)
    setting = {"calibration_texts": 6, "eval_texts": 4, "retrieval_pairs": 4, "steps": 1,
               "save": False}  # fmt: skip
    rows = _run("hedgehog", {}, 32, **setting)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert rows[1]["retrieval_pairs"] == 4 and rows[1]["retrieval_top1"] is not None
    assert len(fitted_on) == 6
    seen = {text for key in fitted_on for text in captured[key]}
    texts = transfer_texts(32, 6, 4, 4)
    assert seen == set(texts.calibration)
    assert not set(texts.calibration_topics) & set(texts.evaluation_topics)
    # the held-out paragraphs: those of evaluation topics that no calibration topic repeats
    calibration = {p for t, p in pydoc_paragraphs() if t in set(texts.calibration_topics)}
    held_out = [
        p
        for t, p in pydoc_paragraphs()
        if t in set(texts.evaluation_topics) and p not in calibration
    ]
    for text in seen:  # no held-out paragraph, passage or pair half inside a fitted text
        assert not any(p in text for p in held_out)
        assert not any(e in text or text in e for e in texts.evaluation)
        assert not any(half in text for pair in texts.pairs for half in pair)


def test_split_is_disjoint_for_every_length() -> None:
    from harness.minilm.texts import pydoc_paragraphs
    from harness.tasks.transfer.texts import split_topics, transfer_texts

    calibration, evaluation = split_topics(3)
    assert calibration and evaluation and not set(calibration) & set(evaluation)
    cal_paragraphs = [p for t, p in pydoc_paragraphs() if t in set(calibration)]
    for length in (32, 128):
        texts = transfer_texts(length, 20, 20, 50, seed=1)
        for text in texts.evaluation + [h for pair in texts.pairs for h in pair]:
            assert not any(p in text or text in p for p in cal_paragraphs)
    with pytest.raises(ValueError, match="calibration_every"):
        split_topics(1)
    with pytest.raises(ValueError, match="calibration texts requested"):
        transfer_texts(32, 10**6, 1, 0)


def _spaced(text: str) -> str:
    """``text`` with every run of whitespace one space (pydoc uses one or two after a stop)."""
    return " ".join(text.split())


@pytest.mark.parametrize("length, seed", [(128, 0), (128, 1), (64, 0)])
def test_held_out_pairs_and_passages_are_unseen_and_distinct(length, seed) -> None:
    """No held-out retrieval half occurs in calibration text, whitespace aside; every pair
    comes from an evaluation topic; the held-out passages differ once cut to the length."""
    from harness.minilm.model import encode
    from harness.minilm.retrieval import topic_retrieval_pairs
    from harness.minilm.texts import pydoc_paragraphs
    from harness.tasks.transfer.texts import transfer_texts

    texts = transfer_texts(length, 48, 16, 200, seed=seed)  # the CPU preset's counts
    cal_topics = set(texts.calibration_topics)
    topic_of = {pair: topic for topic, pair in topic_retrieval_pairs()}
    assert all(topic_of[pair] in set(texts.evaluation_topics) for pair in texts.pairs)
    calibration = "\n".join(_spaced(p) for t, p in pydoc_paragraphs() if t in cal_topics)
    fitted = "\n".join(_spaced(t) for t in texts.calibration)
    halves = [_spaced(half) for pair in texts.pairs for half in pair]
    assert [h for h in halves if h in calibration or h in fitted] == []
    assert not any(_spaced(e) in calibration for e in texts.evaluation)
    ids = encode(texts.evaluation, length)["input_ids"]
    assert len({tuple(row) for row in ids.tolist()}) == len(texts.evaluation) == 16


class _Recorder(AttentionVariant):
    """Exact attention that records which instance ran (one per layer)."""

    name = "recorder"
    calls: list[int] = []

    def __init__(self, index: int = 0) -> None:
        super().__init__()
        self.index = index
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, q, k, v, causal=False):
        type(self).calls.append(self.index)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v) + self.weight

    def flops(self, batch, heads, q_len, kv_len, head_dim, causal):
        return 1


def test_layerwise_attention_runs_each_layers_own_instance() -> None:
    from harness.minilm.embed import embed
    from harness.minilm.layerwise import LayerwiseAttention
    from harness.minilm.model import load_model

    lw = LayerwiseAttention([_Recorder(i) for i in range(6)])
    _Recorder.calls = []
    texts = ["The cat sat on the mat.", "A much longer sentence about attention in models."]
    with lw.attached(load_model("cpu")):
        got = embed(texts, lw, batch_size=2).embeddings
    assert sorted(set(_Recorder.calls)) == list(range(6))
    assert _Recorder.calls == sorted(_Recorder.calls)  # layer order, each layer's own instance
    exact = embed(texts, None, batch_size=2).embeddings
    torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="attached"):  # outside attached(): refused
        embed(texts[:1], lw)


def test_loss_curve_summary_keeps_first_and_last() -> None:
    from harness.tasks.transfer.measure import _curve

    curves = [[float(i) for i in range(200)], [float(2 * i) for i in range(200)]]
    curve = _curve(curves, points=50)
    assert len(curve) <= 51 and curve[0] == 0.0 and curve[-1] == pytest.approx(1.5 * 199)
