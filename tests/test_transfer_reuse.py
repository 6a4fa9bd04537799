"""A saved transfer fit measured by a realmodel point (``realmodel.fit_path``).

The fit is made here without fitting: six Linformer instances with learned projections, each
seeded differently (so that a layer running another layer's instance would show), saved with
:func:`harness.minilm.layerwise.save_fit` as a transfer point saves them. The checks of
the file (missing, another variant, knob or length) need no model; measuring with the fit
needs the ``attnbench[real]`` extra and is skipped without it. Texts are short, so it takes
seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from minilm_points import minilm_point

import variants
from harness.measure.config import ConfigError
from harness.minilm.layerwise import LayerwiseAttention, save_fit
from harness.minilm.model import unavailable_reason
from harness.tasks.realmodel.config import RealmodelConfig
from harness.tasks.realmodel.measure import measure

LENGTH = 32
#: Few short texts, no retrieval, no heatmap: a point in seconds.
REALMODEL = {"lengths": [LENGTH], "texts_per_length": 2, "batch_size": 2, "repeats": 10,
             "retrieval_pairs": 0, "heatmap": False}  # fmt: skip
needs_model = pytest.mark.skipif(
    unavailable_reason() is not None, reason=str(unavailable_reason())
)


@pytest.fixture(scope="module")
def fit_file(tmp_path_factory) -> Path:
    layers = [
        variants.create("linformer", k=8, kv_len=LENGTH, head_dim=32, init="learned", seed=i)
        for i in range(6)
    ]
    path = tmp_path_factory.mktemp("fit") / "transfer_linformer_8.pt"
    return save_fit(path, LayerwiseAttention(layers), kv_len=LENGTH, seed=0)


def _measure(variant: str, params: dict, kv_len: int = LENGTH, **realmodel) -> dict:
    point = minilm_point("realmodel", variant, params, kv_len=kv_len, **(REALMODEL | realmodel))
    (row,) = measure(point, point.factory())
    return row


@needs_model
def test_saved_fit_is_measured_layer_by_layer(one_thread, fit_file: Path) -> None:
    from harness.minilm.embed import embed
    from harness.minilm.layerwise import load_fit
    from harness.minilm.model import load_model
    from harness.tasks.realmodel.measure import realmodel_texts

    row = _measure("linformer", {"k": 8}, fit_path=str(fit_file))
    assert row["status"] == "ok", row["reason"]
    assert row["trained"] is True and row["fit_file"] == str(fit_file)
    assert row["params"]["init"] == "learned" and (row["knob"], row["knob_value"]) == ("k", 8)
    # the row's cosine is that of the fit's own instances, each in its layer
    texts, lengths = realmodel_texts([LENGTH], 2, 0)
    fitted = load_fit(fit_file)
    exact = embed(texts, None, lengths=lengths, batch_size=2).embeddings.double()
    with fitted.attached(load_model("cpu")):
        approx = embed(texts, fitted, lengths=lengths, batch_size=2).embeddings.double()
    assert row["embed_cosine"] == pytest.approx(float((exact * approx).sum(-1).mean()), abs=1e-6)
    # ... and not that of the variant the point would build without the fit
    untrained = _measure("linformer", {"k": 8})
    assert untrained["status"] == "ok" and "fit_file" not in untrained
    assert abs(untrained["embed_cosine"] - row["embed_cosine"]) > 1e-4


@pytest.mark.parametrize(
    "variant, params, kv_len, expected",
    [
        ("linformer", {"k": 16}, LENGTH, "holds a fit for k=8 but the point's k is 16"),
        ("linformer", {"k": 8}, 64, "holds a fit for kv_len=32 but the point's kv_len is 64"),
        ("nystrom", {"num_landmarks": 8}, LENGTH, "for variant='linformer'"),
    ],
)
def test_a_fit_of_another_point_is_an_error_row(fit_file, variant, params, kv_len, expected):
    row = _measure(variant, params, kv_len, lengths=[kv_len], fit_path=str(fit_file))
    assert row["status"] == "error"
    assert (
        row["reason"].startswith(f"realmodel.fit_path='{fit_file}'") and expected in row["reason"]
    )


def test_a_missing_or_bad_fit_path_is_an_error_row(tmp_path: Path) -> None:
    row = _measure("linformer", {"k": 8}, fit_path=str(tmp_path / "nothing.pt"))
    assert row["status"] == "error"
    assert "realmodel.fit_path=" in row["reason"] and "no such file" in row["reason"]
    (tmp_path / "junk.pt").write_bytes(b"not a fit")
    row = _measure("linformer", {"k": 8}, fit_path=str(tmp_path / "junk.pt"))
    assert row["status"] == "error" and "cannot be loaded" in row["reason"]
    with pytest.raises(ConfigError, match="realmodel.fit_path=5 must be"):
        RealmodelConfig(fit_path=5)


def test_presets_give_valid_blocks() -> None:
    """The GPU transfer preset's block passes the transfer checks; the real-model preset's
    fit_path defaults to null."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from harness.app.main import CONF_DIR
    from harness.minilm.limits import MAX_TOKENS
    from harness.tasks.transfer.config import TransferConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        gpu = compose("config", overrides=["+experiment=transfer_gpu"])
        cpu = compose("config", overrides=["+experiment=transfer"])
        real = compose("config", overrides=["+experiment=realmodel"])
    assert gpu.device == "cuda" and gpu.experiment_name == "transfer_gpu"
    assert 2 <= gpu.seq_len <= MAX_TOKENS  # the texts' length, within the model's positions
    cfg = OmegaConf.to_object(gpu.transfer)
    assert isinstance(cfg, TransferConfig)
    assert cfg.steps > cpu.transfer.steps and cfg.eval_texts > cpu.transfer.eval_texts
    assert TransferConfig(**OmegaConf.to_container(gpu.transfer)) == cfg
    real_cfg = RealmodelConfig(**OmegaConf.to_container(real.realmodel))
    assert real_cfg.fit_path is None
