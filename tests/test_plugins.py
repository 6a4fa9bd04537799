"""Plugins end to end: install the example package, use it everywhere, survive broken plugins.

The example (``examples/plugin-variant``, distribution ``attnbench-cosformer``, variant
``cosformer``) is pip-installed (no build isolation, no index: offline) into a temporary
``--target`` folder that the subprocesses of these tests put on ``PYTHONPATH``; the test
environment itself is left untouched. Where the example is already installed (CI installs it so
that ``tests/test_conformance.py`` covers it), that installation is used as it is.

Broken plugins, and a minimal hand-written plugin, need no installation: a ``*.dist-info``
folder with an ``entry_points.txt`` on ``sys.path`` is all ``importlib.metadata`` looks for.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from helpers import run_python

from harness.conformance import CHECKS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "plugin-variant"
PLUGIN = "cosformer"
TIMEOUT = 1800  # seconds per subprocess; a loaded 2-core machine is slow


def _run(args: list[str], paths: list[Path], cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``python args...`` with ``paths`` in front of PYTHONPATH; output captured as text."""
    return run_python(args, paths=paths, cwd=cwd, timeout=TIMEOUT)


def _py(code: str, paths: list[Path]) -> subprocess.CompletedProcess:
    return _run(["-c", textwrap.dedent(code)], paths)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def plugin_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Paths that make the example plugin importable and discoverable in a subprocess."""
    try:
        metadata.distribution("attnbench-cosformer")
        return []  # already installed in this environment (CI)
    except metadata.PackageNotFoundError:
        pass
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    # Build from a copy so that concurrent runs never share build/ or *.egg-info in the tree.
    shutil.copytree(
        EXAMPLE,
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"),
    )
    site = root / "site"
    _ok(
        _run(
            [
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "--disable-pip-version-check",
                "--quiet",
                "--target",
                str(site),
                str(source),
            ],
            paths=[],
        )
    )
    assert (site / "attnbench_cosformer").is_dir()
    return [site]


BROKEN_DIST = {
    "attnbench_broken/__init__.py": "",
    "attnbench_broken/boom.py": "raise ImportError('boom is broken on purpose')\n",
    "attnbench_broken/shapes.py": textwrap.dedent(
        """
        from variants import AttentionVariant

        class NotAVariant:
            name = "not_a_variant"

        class NoForward(AttentionVariant):
            name = "no_forward"

            def flops(self, batch, heads, q_len, kv_len, head_dim, causal):
                return 1
        """
    ),
    "attnbench_broken-0.0.1.dist-info/METADATA": (
        "Metadata-Version: 2.1\nName: attnbench-broken\nVersion: 0.0.1\n"
    ),
    "attnbench_broken-0.0.1.dist-info/entry_points.txt": textwrap.dedent(
        """
        [attnbench.variants]
        broken_import = attnbench_broken.boom:Variant
        not_a_variant = attnbench_broken.shapes:NotAVariant
        no_forward = attnbench_broken.shapes:NoForward
        full = attnbench_broken.shapes:NoForward
        """
    ),
}
BROKEN_REASONS = {
    "broken_import": "broken on purpose",
    "not_a_variant": "is not a subclass of variants.AttentionVariant",
    "no_forward": "does not implement forward()",
    "full": "uses the built-in name",
}


HANDMADE_DIST = {
    "attnbench_handmade/__init__.py": "",
    "attnbench_handmade/handmade.py": textwrap.dedent(
        """
        import torch.nn.functional as F
        from variants import AttentionVariant, causal_mask

        class HandmadeAttention(AttentionVariant):
            \"\"\"Exact attention with one parameter of its own.\"\"\"

            name = "handmade"
            exact = True

            def __init__(self, width=2, kv_len=None, head_dim=None, scale=None):
                super().__init__(kv_len=kv_len, head_dim=head_dim, scale=scale)
                self.width = width

            def forward(self, q, k, v, causal=False):
                mask = causal_mask(q.shape[-2], k.shape[-2], q.device) if causal else None
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

            def flops(self, batch, heads, q_len, kv_len, head_dim, causal):
                return 4 * batch * heads * q_len * kv_len * head_dim
        """
    ),
    "attnbench_handmade-0.0.1.dist-info/METADATA": (
        "Metadata-Version: 2.1\nName: attnbench-handmade\nVersion: 0.0.1\n"
    ),
    "attnbench_handmade-0.0.1.dist-info/entry_points.txt": (
        "[attnbench.variants]\nhandmade = attnbench_handmade.handmade:HandmadeAttention\n"
    ),
}


def _write_dist(folder: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder


@pytest.fixture
def broken_site(tmp_path: Path) -> Path:
    """A folder holding a plugin distribution whose every entry point is broken."""
    return _write_dist(tmp_path, BROKEN_DIST)


# ------------------------------------------------------------------------------ registry
def test_installed_plugin_is_available_and_creatable(plugin_paths: list[Path]) -> None:
    out = _ok(
        _py(
            """
        import json, torch, variants
        from variants import VariantConfigError
        module = variants.create("cosformer", kv_len=64, head_dim=16, chunk_size=8)
        q = torch.randn(1, 2, 64, 16)
        try:
            variants.create("cosformer", chunk_size=0)
            bad = None
        except VariantConfigError as exc:
            bad = str(exc)
        print(json.dumps({
            "available": variants.available(), "builtins": variants.builtin_names(),
            "config": module.config(), "shape": list(module(q, q, q, causal=True).shape),
            "bad": bad,
        }))
        """,
            plugin_paths,
        )
    )
    info = json.loads(out.strip().splitlines()[-1])
    assert PLUGIN in info["available"] and PLUGIN not in info["builtins"]
    assert info["config"]["chunk_size"] == 8
    assert info["shape"] == [1, 2, 64, 16]
    assert info["bad"] and "chunk_size=0" in info["bad"]


@pytest.mark.slow
def test_installed_plugin_passes_conformance(plugin_paths: list[Path]) -> None:
    """The plugin's own tests (conformance kit + float64 formula) and the suite's parametrized
    conformance test both run it once it is installed."""
    proc = _run(
        [
            "-m",
            "pytest",
            "-v",
            "-rs",
            "-p",
            "no:cacheprovider",
            str(EXAMPLE / "tests" / "test_cosformer.py"),
            str(REPO / "tests" / "test_conformance.py"),
            "-k",
            PLUGIN,
        ],
        plugin_paths,
    )
    out = _ok(proc)
    assert "not pip-installed" not in out, out  # the registry test ran, not skipped
    suite = [ln for ln in out.splitlines() if f"test_conformance[{PLUGIN}-" in ln]
    assert len(suite) == len(CHECKS) and all("PASSED" in ln for ln in suite), out


# ------------------------------------------------------------------------------ Hydra
def test_hydra_config_is_generated_without_yaml(plugin_paths: list[Path], tmp_path: Path) -> None:
    """``variant=cosformer variant.<param>=...`` composes and instantiates with no YAML file;
    bad types and unknown keys are refused; a YAML file, where present, wins."""
    conf = tmp_path / "conf"
    (conf / "variant").mkdir(parents=True)
    (conf / "config.yaml").write_text("defaults:\n  - variant: full\n  - _self_\nseq_len: 64\n")
    (conf / "variant" / "full.yaml").write_text("_target_: variants.full.FullAttention\n")
    out = _ok(
        _py(
            f"""
        import json
        from hydra import compose, initialize_config_dir
        from hydra.utils import instantiate
        from harness.app.plugin_configs import register_plugin_configs

        print(json.dumps(register_plugin_configs(conf_dir={str(conf)!r})))
        result = {{}}
        with initialize_config_dir(config_dir={str(conf)!r}, version_base="1.3"):
            cfg = compose("config", overrides=["variant=cosformer", "variant.chunk_size=32"])
            module = instantiate(cfg.variant, kv_len=cfg.seq_len, head_dim=16)
            result["target"] = cfg.variant._target_
            result["config"] = module.config()
            for bad in ("variant.chunk_size=abc", "variant.no_such_param=1"):
                try:
                    compose("config", overrides=["variant=cosformer", bad])
                    result[bad] = None
                except Exception as exc:
                    result[bad] = str(exc)
        print(json.dumps(result))
        """,
            plugin_paths,
        )
    )
    registered, result = (json.loads(line) for line in out.strip().splitlines()[-2:])
    assert registered == [PLUGIN]
    assert result["target"] == "attnbench_cosformer.cosformer.CosFormerAttention"
    assert result["config"]["chunk_size"] == 32 and result["config"]["kv_len"] == 64
    assert "chunk_size" in result["variant.chunk_size=abc"]
    assert "no_such_param" in result["variant.no_such_param=1"]

    (conf / "variant" / f"{PLUGIN}.yaml").write_text(
        "_target_: attnbench_cosformer.cosformer.CosFormerAttention\n"
    )
    out = _ok(
        _py(
            f"""
        import json
        from harness.app.plugin_configs import register_plugin_configs
        print(json.dumps(register_plugin_configs(conf_dir={str(conf)!r})))
        """,
            plugin_paths,
        )
    )
    assert json.loads(out.strip().splitlines()[-1]) == []


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("harness.app.main") is None
    or importlib.util.find_spec("harness.tasks.attention.measure") is None,
    reason="the Hydra app (harness.app.main, harness.tasks.attention.measure) is not written yet",
)
def test_attnbench_runs_plugin_without_yaml(plugin_paths: list[Path], tmp_path: Path) -> None:
    """``attnbench -m variant=cosformer,full seq_len=128`` writes ok rows for the plugin, and
    the aggregate and the report (when the report module exists) include it."""
    sweep = tmp_path / "sweep"
    proc = _run(
        [
            "-m",
            "harness.app.main",
            "-m",
            f"variant={PLUGIN},full",
            "seq_len=128",
            "heads=2",
            "head_dim=16",
            "passes=[fwd]",
            "measure.min_run_time=0.01",
            "measure.threads=1",
            f"hydra.sweep.dir={sweep}",
        ],
        plugin_paths,
    )
    _ok(proc)
    rows = [
        json.loads(line)
        for path in sweep.rglob("rows.jsonl")
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    mine = [r for r in rows if r.get("variant") == PLUGIN]
    assert mine and all(r["status"] == "ok" for r in mine), mine
    assert mine[0]["rel_err"] is not None and mine[0]["rel_err"] > 0  # approximate, measured
    if importlib.util.find_spec("harness.report.build") is not None:
        reports = list(sweep.rglob("report.md"))
        assert reports, f"no report.md under {sweep}"
        assert PLUGIN in reports[0].read_text()
        csvs = list(sweep.rglob("results.csv"))
        assert csvs and PLUGIN in csvs[0].read_text()


def test_plugin_without_yaml_gets_a_config_and_is_built(tmp_path: Path) -> None:
    """A plugin with no YAML file: its generated config leaves the per-point parameters out, the
    harness's ``kv_len=`` and ``head_dim=`` reach it, and it passes the conformance kit."""
    site = _write_dist(tmp_path / "site", HANDMADE_DIST)
    conf = tmp_path / "conf"
    (conf / "variant").mkdir(parents=True)
    (conf / "config.yaml").write_text("defaults:\n  - variant: full\n  - _self_\n")
    (conf / "variant" / "full.yaml").write_text("_target_: variants.full.FullAttention\n")
    out = _ok(
        _py(
            f"""
        import json, warnings
        import variants
        from hydra import compose, initialize_config_dir
        from hydra.utils import instantiate
        from harness.app.plugin_configs import register_plugin_configs
        from harness.conformance import run_conformance

        registered = register_plugin_configs(conf_dir={str(conf)!r})
        with initialize_config_dir(config_dir={str(conf)!r}, version_base="1.3"):
            cfg = compose("config", overrides=["variant=handmade", "variant.width=3"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = instantiate(cfg.variant, kv_len=48, head_dim=8)
        run_conformance("handmade")
        print(json.dumps({{
            "registered": registered, "keys": sorted(cfg.variant), "config": module.config(),
            "kv_len": module.kv_len, "created": variants.create("handmade", kv_len=32).kv_len,
            "warnings": [str(w.category.__name__) for w in caught],
        }}))
        """,
            [site],
        )
    )
    info = json.loads(out.strip().splitlines()[-1])
    assert "handmade" in info["registered"]
    assert info["keys"] == ["_target_", "scale", "width"]  # no kv_len, head_dim: per point
    assert info["config"] == {"width": 3, "kv_len": 48, "head_dim": 8, "scale": None}
    assert info["kv_len"] == 48 and info["created"] == 32
    assert info["warnings"] == []


# ------------------------------------------------------------------------------ broken plugins
def test_broken_plugins_are_listed_with_reasons(broken_site: Path) -> None:
    proc = _run(["-m", "harness.app.list_variants", "--json"], [broken_site])
    rows = json.loads(_ok(proc))
    plugins = {r["name"]: r for r in rows if r["source"] == "plugin"}
    for name, reason in BROKEN_REASONS.items():
        assert name in plugins, f"{name} missing from the listing"
        assert plugins[name]["ok"] is False and reason in plugins[name]["error"], plugins[name]
        assert plugins[name]["distribution"] == "attnbench-broken 0.0.1"
    builtin_full = next(r for r in rows if r["name"] == "full" and r["source"] == "builtin")
    assert builtin_full["ok"] is True

    table = _ok(_run(["-m", "harness.app.list_variants"], [broken_site]))
    for name, reason in BROKEN_REASONS.items():
        line = next(
            ln for ln in table.splitlines() if ln.startswith(f"{name} ") and "plugin" in ln
        )
        assert "broken" in line and reason in line
    assert _run(["-m", "harness.app.list_variants", "--strict"], [broken_site]).returncode == 1


def test_broken_plugins_do_not_break_the_registry(
    broken_site: Path, plugin_paths: list[Path]
) -> None:
    out = _ok(
        _py(
            """
        import json, torch, variants
        names = variants.available()
        module = variants.create("full")
        q = torch.randn(1, 1, 8, 4)
        finite = bool(module(q, q, q).isfinite().all())
        print(json.dumps({"available": names, "errors": variants.plugin_errors(),
                          "full": type(module).__module__, "ok": finite}))
        """,
            [broken_site, *plugin_paths],
        )
    )
    info = json.loads(out.strip().splitlines()[-1])
    assert "full" in info["available"] and PLUGIN in info["available"]
    for name in ("broken_import", "not_a_variant", "no_forward"):
        assert name not in info["available"]
        assert BROKEN_REASONS[name] in info["errors"][name]
    assert info["full"] == "variants.full" and info["ok"]
