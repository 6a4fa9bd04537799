"""Hydra configs: every variant config instantiates, every experiment composes, launchers too."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

import variants
from harness.app.main import CONF_DIR, ConfigError, resolve_point

VARIANT_CONFIGS = sorted(p.stem for p in (Path(CONF_DIR) / "variant").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def _compose(overrides: list[str], hydra_cfg: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra_cfg)


def test_every_builtin_has_a_variant_config() -> None:
    for name in variants.builtin_names():
        assert name in VARIANT_CONFIGS, f"conf/variant/{name}.yaml missing"


@pytest.mark.parametrize("name", VARIANT_CONFIGS)
def test_variant_config_instantiates(name: str) -> None:
    cfg = _compose([f"variant={name}"])
    module = instantiate(cfg.variant, seq_len=256, head_dim=64)
    assert isinstance(module, variants.AttentionVariant)
    point = resolve_point(cfg)
    assert point["variant"] == type(module).name


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_sweeps(experiment: str) -> None:
    cfg = _compose([f"+experiment={experiment}"], hydra_cfg=True)
    assert cfg.experiment_name == experiment
    assert cfg.hydra.mode.name == "MULTIRUN"
    params = cfg.hydra.sweeper.params
    assert params, "each preset sets its sweep through hydra.sweeper.params"
    # every variant named in the sweep has a config
    for name in str(params.get("variant", cfg.hydra.runtime.choices.variant)).split(","):
        assert name in VARIANT_CONFIGS, f"{experiment}: variant {name} has no config"
    # the command line can override any part of the sweep
    cfg2 = _compose([f"+experiment={experiment}", "hydra.sweeper.params.variant=sdpa"], True)
    assert cfg2.hydra.sweeper.params.variant == "sdpa"


@pytest.mark.parametrize(
    "override,field",
    [
        ("seq_len=0", "seq_len"),
        ("heads=-2", "heads"),
        ("dtype=float8", "dtype"),
        ("device=tpu", "device"),
        ("passes=[fwd,sideways]", "passes"),
        ("kv_len=0", "kv_len"),
    ],
)
def test_bad_values_name_the_field(override: str, field: str) -> None:
    cfg = _compose([override])
    with pytest.raises(ConfigError, match=field):
        resolve_point(cfg)


def test_knob_sets_the_variants_knob() -> None:
    cfg = _compose(["variant=performer", "knob=64"])
    assert resolve_point(cfg)["params"]["nb_features"] == 64


@pytest.mark.parametrize(
    "launcher", ["submitit_local", "submitit_slurm", "attnbench_slurm", "joblib"]
)
def test_launchers_compose(launcher: str) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cfg = _compose(["+experiment=quick", f"hydra/launcher={launcher}"], hydra_cfg=True)
    launcher_cfg = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert "_target_" in launcher_cfg
    if launcher == "attnbench_slurm":
        assert launcher_cfg["gpus_per_node"] == 1
        assert "partition" in launcher_cfg and launcher_cfg["timeout_min"] == 60
