"""The points advise measures: each as the Hydra overrides of one ``attnbench`` job.

A point is the command that reproduces it: ``attnbench`` with :func:`overrides` measures the same
point (the same ``point_id``) as advise does, into a sweep folder of its own.

**The default set** (:func:`default_arms`): the exact backends and every efficient variant at its
default knob. Exact backends are ``sdpa`` (PyTorch's dispatcher: on the CPU its flash kernel; on
CUDA also the flash, efficient and cuDNN kernels pinned one by one), ``xformers`` on CUDA and any
other exact plugin; ``full`` (the textbook reference, never faster than ``sdpa``'s math) is
measured only where none of them ran. A variant that cannot run the setting (no causal form, no
decode form) gives a row saying why, quickly.

**Few repeats** (:data:`MEASURE`): a short timing block (at least 5 timed blocks still), one
seed of a randomised variant, no effective-matrix divergences, and a float64 reference covering
a seeded sample of query rows where the whole one would exceed 4 GFLOP (the error is taken at
the setting itself). Inputs are ``structured``: synthetic q, k, v with the attention statistics
of a pretrained model's (the suite's realistic inputs).
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Iterable
from typing import Any

import variants
from harness.advise.setting import Setting
from harness.app.config import conf_dir
from harness.app.point import Point
from harness.measure.config import ConfigError
from variants.base import check_choice

#: Measurement settings of advise's points (module docstring).
MEASURE: tuple[str, ...] = (
    "inputs=structured",
    "seeds=[0]",
    "measure.min_run_time=0.05",
    "measure.attn_matrix_max_n=1",
    "measure.reference_max_work=4e9",
)
#: Decode points: fewer timed steps and no model-level stack.
DECODE: tuple[str, ...] = (
    "task=decode",
    "decode.steps=16",
    "decode.warmup=2",
    "decode.model_depth=0",
)
#: ``sdpa`` kernels pinned one by one on CUDA (``auto`` is always measured).
CUDA_SDPA_BACKENDS = ("flash", "efficient", "cudnn")
#: The fallback exact variant (module docstring).
FALLBACK_EXACT = "full"


@dataclasses.dataclass
class Planned:
    """One point advise may measure.

    Args:
        variant: Registry name.
        extra: The overrides that choose the variant and its parameters.
        overrides: Every override of the point (setting, measurement, variant).
        point: The resolved point (None until composed).
    """

    variant: str
    extra: list[str]
    overrides: list[str]
    point: Point | None = None

    @property
    def command(self) -> str:
        """The ``attnbench`` command that measures this point."""
        return "attnbench " + " ".join(shlex.quote(o) for o in self.overrides)


def base_overrides(setting: Setting) -> list[str]:
    """The overrides every point of the setting shares."""
    passes = [] if setting.mode == "decode" else [f"passes=[{setting.pass_name}]"]
    threads = [f"measure.threads={setting.threads}"] if setting.threads else []
    decode = list(DECODE) if setting.mode == "decode" else []
    return [*setting.overrides(), *passes, *MEASURE, *threads, *decode]


def hydra_value(value: Any) -> str:
    """A parameter value as a Hydra override writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def arm_overrides(variant: str, knob_value: Any = None, params: dict | None = None) -> list[str]:
    """``variant=NAME`` plus its knob and other parameters as overrides."""
    out = [f"variant={variant}"]
    if knob_value is not None:
        out.append(f"knob={hydra_value(knob_value)}")
    out += [f"variant.{k}={hydra_value(v)}" for k, v in sorted((params or {}).items())]
    return out


def planned(setting: Setting, variant: str, extra: list[str]) -> Planned:
    """The point of ``variant`` with ``extra`` overrides at the setting (not yet composed)."""
    return Planned(variant, list(extra), [*base_overrides(setting), *extra])


def check_names(names: Iterable[str] | None) -> list[str] | None:
    """``names`` as a list, each a registered variant (ConfigError naming the allowed ones)."""
    if names is None:
        return None
    known = tuple(variants.available())
    return [check_choice(None, "variants", n, known, error=ConfigError) for n in names]


def default_arms(setting: Setting, names: Iterable[str] | None = None) -> list[Planned]:
    """The default set (module docstring), exact backends first; ``names`` restricts it to
    those variants (``full`` included when named)."""
    wanted = check_names(names)
    exact, efficient = [], []
    for name in variants.available():
        if wanted is not None and name not in wanted:
            continue
        cls = variants.get_class(name)
        if not cls.exact:
            efficient.append(planned(setting, name, arm_overrides(name)))
        elif name == "sdpa":
            exact.append(planned(setting, name, arm_overrides(name)))
            if setting.device.startswith("cuda"):
                for backend in CUDA_SDPA_BACKENDS:
                    pinned = arm_overrides(name, params={"backend": backend})
                    exact.append(planned(setting, name, pinned))
        elif name != FALLBACK_EXACT or wanted is not None:
            if name == "xformers" and not setting.device.startswith("cuda"):
                continue  # CUDA only: not a backend of this machine
            exact.append(planned(setting, name, arm_overrides(name)))
    return exact + efficient


def compose_points(plans: list[Planned]) -> list[tuple[Planned, str]]:
    """Compose and validate every plan's point; returns the plans whose point is invalid with
    the one-line reason (a variant's parameter the setting rules out, e.g. Linformer's ``k``
    above ``kv_len``). Raises ConfigError when every plan is (the setting itself is wrong)."""
    from hydra import compose, initialize_config_dir

    invalid = []
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        for plan in plans:
            if plan.point is not None:
                continue
            try:
                plan.point = Point.from_cfg(compose("config", overrides=plan.overrides))
            except ConfigError as exc:
                invalid.append((plan, str(exc)))
    if plans and len(invalid) == len(plans):
        raise ConfigError(invalid[0][1])
    return invalid
