"""The offline GPU check (issue 18, docs/gpu.md), tested on the CPU.

* ``scripts/gpu_prepare.py --from-installed`` builds the wheel folder from this environment, and
  a fresh virtual environment that holds only what the GPU machine has (torch, numpy, pandas,
  matplotlib, scipy, PyYAML, tqdm, packaging and their needs, linked in from here) installs
  the project from that folder with no index and composes the ``gpu_smoke`` preset.
* ``scripts/gpu_run.sh`` passes a shell syntax check, refuses clearly without a CUDA device, and
  its whole flow runs on the CPU with the CUDA check switched off (every point then fails) and
  leaves at most 8 files of at most 16 MiB.

The real preparation downloads from PyPI; it is not run here. The tests download nothing where
this environment's setuptools builds wheels by itself (>= 70.1, or with the ``wheel`` package);
otherwise pip fetches setuptools to build the project's wheel.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "scripts" / "gpu_run.sh"
PREPARE = ROOT / "scripts" / "gpu_prepare.py"

_spec = importlib.util.spec_from_file_location("gpu_prepare", PREPARE)
prep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prep)

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def offline_env(**extra: str) -> dict[str, str]:
    """This environment without pip settings (no index, no extra links, no config file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def test_run_script_syntax():
    subprocess.run(["bash", "-n", str(RUN)], check=True)


def test_run_script_usage():
    got = subprocess.run(["bash", str(RUN)], capture_output=True, text=True)
    assert got.returncode == 2 and got.stdout == ""
    assert got.stderr.startswith("gpu_run.sh: usage:") and got.stderr.count("\n") == 1


@needs_no_cuda
def test_run_script_refuses_without_cuda(tmp_path):
    out = tmp_path / "out"
    got = subprocess.run(
        ["bash", str(RUN), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert got.returncode == 2 and got.stdout == ""
    assert got.stderr.count("\n") == 1, got.stderr
    assert got.stderr.startswith("gpu_run.sh: no CUDA device: torch ")
    assert "nothing was run" in got.stderr
    assert not out.exists()


def test_requirements_cover_the_project_dependencies():
    """Every dependency is in the folder or already on the GPU machine, within pyproject's pins."""
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ours = {canonical(name): Requirement(req) for name, req in prep.REQUIREMENTS}
    there = {canonical(name) for name in prep.GPU_PREINSTALLED}
    for dep in map(Requirement, deps):
        name = canonical(dep.name)
        assert name in ours or name in there, f"{dep.name} is neither prepared nor preinstalled"
        if name in ours:  # the folder's range lies within pyproject's
            assert set(map(str, dep.specifier)) <= set(map(str, ours[name].specifier)), dep


@pytest.mark.parametrize(
    "requires, build, ok, words",
    [
        (["torch==2.10.0", "numpy"], None, False, ["torch==2.10.0", "torch 2.11.0"]),
        (["torch>=2.10", "numpy"], None, True, ["torch>=2.10"]),
        (
            ["torch>=2.10"],
            {"version": {"cuda": 1208, "torch": "2.10.0+cu128"}},
            True,
            ["CUDA 12.8", "may not load", "xformers.info"],
        ),
        (["torch>=2.10"], {"version": {"cuda": 1300, "torch": "2.11.0"}}, True, ["CUDA 13.0"]),
    ],
)
def test_xformers_verdict(requires, build, ok, words):
    got_ok, note = prep.xformers_verdict(requires, build, "2.11.0", 13)
    assert got_ok is ok
    for word in words:
        assert word in note
    if build and build["version"]["cuda"] // 100 == 13:
        assert "may not load" not in note


def test_clean_dest_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "notes.md").write_text("mine")
    with pytest.raises(SystemExit, match="holds other files"):
        prep.clean_dest(tmp_path)
    assert (tmp_path / "notes.md").exists()


def gpu_like_base(base: Path) -> list[str]:
    """Link the GPU machine's preinstalled packages (and their needs) from here into ``base``."""
    seen: dict[str, md.Distribution] = {}
    todo = list(prep.GPU_PREINSTALLED)
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = dist
        for req in map(Requirement, dist.requires or []):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    base.mkdir()
    for dist in seen.values():
        for top in {f.parts[0] for f in dist.files or [] if not f.parts[0].startswith("..")}:
            if not (base / top).exists():
                (base / top).symlink_to(Path(dist.locate_file(top)))
    return sorted(seen)


@pytest.mark.slow
def test_prepared_wheels_install_offline_in_a_fresh_venv(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, str(PREPARE), "--from-installed", "--dest", str(wheels)],
        check=True,
        env=offline_env(),
    )
    names = sorted(p.name for p in wheels.glob("*.whl"))
    for stem in ("attnbench-", "hydra_core-", "omegaconf-", "antlr4_python3_runtime-4.9.3-"):
        assert any(n.startswith(stem) and n.endswith("-none-any.whl") for n in names), names
    assert "target: CPython 3.12" in (wheels / "PREPARED.txt").read_text()

    linked = gpu_like_base(tmp_path / "base")
    assert "torch" in linked and not {"hydra-core", "omegaconf", "attnbench"} & set(linked)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "gpu_machine.pth").write_text(f"{tmp_path / 'base'}\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    subprocess.run(
        [*pip, "--no-index", "--find-links", str(wheels), "attnbench"],
        check=True,
        env=offline_env(),
    )
    run = tmp_path / "run"  # outside the checkout: the installed package must be the one used
    run.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import harness, hydra; print(harness.__file__, hydra.__file__)"],
        cwd=run,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.count(str(env_dir)) == 2, where
    got = subprocess.run(
        [str(env_dir / "bin" / "attnbench"), "+experiment=gpu_smoke", "--cfg", "job"],
        cwd=run,
        capture_output=True,
        text=True,
        env=offline_env(),
    )
    assert got.returncode == 0, got.stderr
    assert "experiment_name: gpu_smoke" in got.stdout and "device: cuda" in got.stdout


@pytest.mark.slow
def test_run_script_flow_on_the_cpu(tmp_path):
    """The whole flow with the CUDA check off: every stage runs or is logged, OUT stays small."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = offline_env(
        PYTHON=sys.executable,
        GPU_RUN_NO_CUDA_CHECK="1",
        GPU_WHEELS=str(tmp_path / "none"),  # the installed attnbench is used
        GPU_RUN_WORK=str(work),
        SMOKE_ARGS="dtype=bfloat16 seq_len=128 variant=sdpa_flash,performer",
        DECODE_ARGS="seq_len=128 variant=sdpa batch=1 kv_heads=2",
        TESTS_S="1",  # cut at once: the time-limit path is exercised, the suite is not run
    )
    got = subprocess.run(["bash", str(RUN), str(out)], capture_output=True, text=True, env=env)
    log = (out / "gpu_run.log").read_text()
    assert got.returncode == 1, log  # no point can run on a CPU
    assert "=== install: ok" in log and "=== cuda tests: CUT at its 1s limit" in log
    assert "=== bundle: ok" in log and "=== summary:" in log
    assert "=== decode_gpu sweep: FAILED" in log  # its one point is unsupported on a CPU
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).stat().st_size <= 16 * 2**20 for f in files)
    for name in ("gpu_run.log", "environment.txt", "results.csv", "results.tar.gz"):
        assert name in files, files
    assert (work / "sweep" / "results.csv").exists()
    rows = (out / "results.csv").read_text()
    assert "sdpa" in rows and "performer" in rows and "bfloat16" in rows
