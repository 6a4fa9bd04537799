"""Hydra configs: every variant config instantiates, every experiment composes, launchers too."""

import dataclasses
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

import variants
from harness import tasks
from harness.app.config import MainConfig
from harness.app.main import CONF_DIR
from harness.app.point import ConfigError, Point
from harness.measure.config import MeasureConfig
from harness.measure.factory import shape_kwargs

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
    cls = get_class(cfg.variant._target_)
    module = instantiate(cfg.variant, **shape_kwargs(cls, 256, 64))
    assert isinstance(module, variants.AttentionVariant)
    assert Point.from_cfg(cfg).variant == type(module).name


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
        ("measure.reference_max_work=0", "measure.reference_max_work"),
        ("measure.memory_budget_gb=-1", "measure.memory_budget_gb"),
        ("measure.threads=0", "measure.threads"),
    ],
)
def test_bad_values_name_the_field(override: str, field: str) -> None:
    cfg = _compose([override])
    with pytest.raises(ConfigError, match=field):
        Point.from_cfg(cfg)


@pytest.mark.parametrize(
    "override,field",
    [
        ("measure.reference_max_work=many", "measure.reference_max_work"),
        ("batch=abc", "batch"),
        ("causal=maybe", "causal"),
        ("colour=blue", "colour"),
        ("measure.speed=1", "measure.speed"),
        ("train.epochs=3", "train.epochs"),
    ],
)
def test_wrong_types_and_unknown_keys_are_hydras_error(override: str, field: str) -> None:
    with pytest.raises(ConfigCompositionException, match=re.escape(field)):
        _compose([override])


@pytest.mark.parametrize("override", ["+measure.speed=1", "+train.epochs=3"])
def test_keys_forced_into_a_block_are_refused_before_any_work(override: str) -> None:
    cfg = _compose(["+experiment=train", override])  # Hydra lets "+" add a key
    with pytest.raises(ConfigError, match=re.escape(override[1:].split("=")[0])):
        Point.from_cfg(cfg)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_preset_shows_every_field_of_the_schema(experiment: str) -> None:
    cfg = _compose([f"+experiment={experiment}"])
    for field in dataclasses.fields(MainConfig):
        assert field.name in cfg, f"{experiment}: {field.name} missing from the composed config"
    assert set(cfg.measure) == {f.name for f in dataclasses.fields(MeasureConfig)}
    for name, task in tasks.tasks().items():
        if task.config is not None:
            block = OmegaConf.to_object(cfg[name])  # typed: the task's dataclass, checked
            assert isinstance(block, task.config_class())


def test_every_default_comes_from_the_schema() -> None:
    cfg = _compose([])
    assert OmegaConf.to_container(cfg.measure) == dataclasses.asdict(MeasureConfig())
    for name, task in tasks.tasks().items():
        if task.config is not None:
            assert OmegaConf.to_container(cfg[name]) == dataclasses.asdict(task.config_class()())


def test_knob_sets_the_variants_knob() -> None:
    cfg = _compose(["variant=performer", "knob=64"])
    point = Point.from_cfg(cfg)
    assert point.params["nb_features"] == 64
    assert point.factory()(0).nb_features == 64  # the built variant has it too
    facts = {k: point.as_dict()[k] for k in ("exact", "randomized", "knob", "knob_value")}
    assert facts == {"exact": False, "randomized": True, "knob": "nb_features", "knob_value": 64}


def test_point_names_lengths_and_ids() -> None:
    args = ["variant=linformer", "knob=32", "seq_len=64"]
    point = Point.from_cfg(_compose([*args, "kv_len=128"]))
    assert (point.q_len, point.kv_len) == (64, 128)
    assert point.device in ("cpu", "cuda")  # "auto" resolved
    same = Point.from_cfg(_compose([*args, "kv_len=128"]))
    other = Point.from_cfg(_compose([*args, "kv_len=256"]))
    assert point.point_id() == same.point_id() != other.point_id()


def test_bad_variant_parameter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="k=128"):
        Point.from_cfg(_compose(["variant=linformer", "seq_len=64", "knob=128"]))


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


def test_reference_work_limit_defaults_and_may_be_lifted() -> None:
    assert Point.from_cfg(_compose([])).measure.reference_max_work == 1e12
    assert (
        Point.from_cfg(_compose(["measure.reference_max_work=null"])).measure.reference_max_work
        is None
    )
