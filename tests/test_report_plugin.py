"""The report reads rows only: no import of variant or measurement code, and a report drawn
where the plugin that wrote the rows is gone equals the one drawn where it is installed.

The end-to-end check runs the real app in a subprocess with the example plugin
(``examples/plugin-variant``, variant ``cosformer``) available, then ``attnbench-report`` in a
subprocess where a meta path finder makes ``variants``, ``harness.measure``,
``harness.minilm``, ``harness.app`` and the plugin's package unimportable.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import textwrap
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from helpers import run_python

from harness.report.build import build_report

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PLUGIN = "cosformer"
PLUGIN_PACKAGE = "attnbench_cosformer"
#: What the report and the analysis must never import, directly, deferred or through harness.
FORBIDDEN = ("variants", "harness.measure", "harness.minilm", "harness.app")
TIMEOUT = 1800  # seconds per subprocess; a loaded 2-core machine is slow


# ------------------------------------------------------------------------------ import graph
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str, package: str) -> set[str]:
    """Every module ``source`` imports, anywhere (functions included), as absolute names.

    Args:
        source: Python source text.
        package: The package the source belongs to, for relative imports.
    """
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def _harness_file(module: str) -> Path | None:
    """The source file of a ``harness`` module (or package), None for anything else."""
    if module != "harness" and not module.startswith("harness."):
        return None
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def test_report_and_analysis_import_no_variant_or_measurement_code() -> None:
    """Walk the imports from report/, analysis/ and the tasks' report modules through every
    harness module they reach."""
    start = sorted((REPO / "harness" / "report").glob("*.py"))
    start += sorted((REPO / "harness" / "analysis").glob("*.py"))
    start += sorted((REPO / "harness" / "tasks").glob("*/report*.py"))
    assert len(start) >= 4
    seen: set[Path] = set()
    todo = list(start) + [REPO / "harness" / "__init__.py"]  # imported with any submodule
    offences = []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        package = _module_name(path if path.name == "__init__.py" else path.parent)
        for module in _imports(path.read_text(), package):
            if _forbidden(module):
                offences.append(f"{path.relative_to(REPO)} imports {module}")
            target = _harness_file(module)
            if target is not None and target not in seen:
                todo.append(target)
    assert not offences, "\n".join(offences)


def test_the_import_walker_sees_deferred_and_relative_imports() -> None:
    source = "def f():\n    import variants.base\n    from ..app import main\n"
    found = _imports(source, "harness.report")
    assert {"variants.base", "harness.app", "harness.app.main"} <= found


# ------------------------------------------------------------------- plugin uninstalled
BLOCKER = """
import sys
from importlib.abc import MetaPathFinder

BLOCKED = {blocked!r}


def hidden(name):
    return any(name == b or name.startswith(b + ".") for b in BLOCKED)


class Hide(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if hidden(name):
            raise ImportError(f"{{name}} is not installed here (hidden by the test)")
        return None


sys.meta_path.insert(0, Hide())
from harness.report.build import cli

rc = cli([{sweep!r}, "--out", {out!r}])
leaked = sorted(m for m in sys.modules if hidden(m))
assert not leaked, f"imported although hidden: {{leaked}}"
sys.exit(rc)
"""


def _run(args: list[str]) -> subprocess.CompletedProcess:
    proc = run_python(args, timeout=TIMEOUT, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.skipif(
    importlib.util.find_spec(PLUGIN_PACKAGE) is None,
    reason="the example plugin (examples/plugin-variant) is not installed",
)
def test_report_is_the_same_without_the_plugin(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    _run(
        [
            "-m",
            "harness.app.main",
            "-m",
            f"variant={PLUGIN},full",
            "seq_len=64,128",
            "heads=2",
            "head_dim=16",
            "passes=[fwd]",
            "measure.min_run_time=0.01",
            "measure.threads=1",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    with_plugin = build_report([sweep], tmp_path / "with")
    code = BLOCKER.format(
        blocked=(*FORBIDDEN, PLUGIN_PACKAGE), sweep=str(sweep), out=str(tmp_path / "without")
    )
    _run(["-c", textwrap.dedent(code)])
    without = tmp_path / "without" / "report.md"

    text = with_plugin.read_text()
    assert f"| {PLUGIN} |" in text  # the plugin's series is in the summary table
    assert without.read_text() == text  # same tables, same figure list, same reasons
    pngs = sorted(p.name for p in with_plugin.parent.glob("*.png"))
    assert "time_fwd.png" in pngs and "error_vs_seq_len.png" in pngs
    assert sorted(p.name for p in without.parent.glob("*.png")) == pngs
    for name in pngs:
        a = matplotlib.image.imread(with_plugin.parent / name)
        b = matplotlib.image.imread(without.parent / name)
        assert a.shape == b.shape and np.array_equal(a, b), f"{name} differs"
