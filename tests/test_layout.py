"""The house rules of the layout: one-way imports, no cycles, files of one purpose.

Imports are read with ``ast`` from the source, deferred imports inside functions included, so a
rule cannot be dodged by moving an import into a function body.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(ROOT.glob("harness/**/*.py")) + sorted(ROOT.glob("variants/**/*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body."""
    mods = _modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_no_import_cycles_between_modules() -> None:
    assert _cycles(_import_graph()) == []


def test_cycle_finder_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]


def test_variants_import_nothing_from_harness() -> None:
    graph = _import_graph()
    bad = {m: sorted(t for t in ts if t.startswith("harness")) for m, ts in graph.items()}
    assert {m: ts for m, ts in bad.items() if m.startswith("variants") and ts} == {}


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("harness.measure", ("harness.app", "harness.report", "harness.minilm", "harness.tasks")),
        ("harness.minilm", ("harness.app", "harness.report", "harness.tasks")),
        (
            "harness.analysis",
            ("harness.app", "harness.report", "harness.tasks", "harness.measure"),
        ),
        ("harness.report", ("harness.app", "harness.measure", "harness.minilm", "variants")),
        ("harness.tasks", ("harness.app.main", "harness.app.callbacks", "harness.report.build")),
    ],
)
def test_data_flows_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    graph = _import_graph()
    bad = {
        m: sorted(t for t in ts if t.startswith(forbidden))
        for m, ts in graph.items()
        if m.startswith(package)
    }
    assert {m: ts for m, ts in bad.items() if ts} == {}


def _task_imports_from_outside(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Imports of ``harness.tasks.<name>...`` from modules outside that task's folder."""
    bad: dict[str, list[str]] = {}
    for module, targets in graph.items():
        for target in sorted(targets):
            parts = target.split(".")
            if parts[:2] != ["harness", "tasks"] or len(parts) < 3 or parts[2] == "base":
                continue
            if module.split(".")[:3] != parts[:3]:
                bad.setdefault(module, []).append(target)
    return bad


def test_no_module_outside_a_tasks_folder_imports_it() -> None:
    """A task is its folder: only its own modules import it (the registry names it by string)."""
    assert _task_imports_from_outside(_import_graph()) == {}


def test_task_import_rule_sees_a_violation() -> None:
    graph = {
        "harness.app.main": {"harness.tasks.train.measure", "harness.tasks.base"},
        "harness.tasks.train.report": {"harness.tasks.train.config"},
        "harness.tasks.transfer.fit": {"harness.tasks.realmodel.config"},
    }
    assert _task_imports_from_outside(graph) == {
        "harness.app.main": ["harness.tasks.train.measure"],
        "harness.tasks.transfer.fit": ["harness.tasks.realmodel.config"],
    }


def test_library_files_stay_under_the_line_limit() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules().values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_reports_list_of_engine_knobs_names_every_knob_the_variants_declare() -> None:
    # harness.analysis may not import the variants' tuner; the names are kept in step here
    from harness.analysis.series import ENGINE_KNOBS

    root = Path(__file__).resolve().parents[1] / "variants"
    declared = set()
    for path in root.rglob("*.py"):
        declared |= set(re.findall(r'Knob\(\s*"(\w+)"', path.read_text()))
    assert declared and declared == set(ENGINE_KNOBS)
