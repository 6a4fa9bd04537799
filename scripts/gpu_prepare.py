"""Prepare the offline GPU check: the wheels the GPU machine lacks, in one ignored folder.

Run on a machine with PyPI access, from the project's environment (docs/gpu.md)::

    python scripts/gpu_prepare.py            # fills gpu_wheels/ (git-ignored)

then carry ``gpu_wheels/`` with the working tree and run ``bash scripts/gpu_run.sh OUT_DIR`` on
the GPU machine (no network). The target is the offline machine we get: x86-64, Python 3.12,
torch 2.11 built for CUDA 13, with numpy, pandas, matplotlib, scipy, PyYAML, tqdm and packaging
already there. The folder holds:

* the pure-Python dependencies that machine lacks (hydra-core, omegaconf, and
  antlr4-python3-runtime 4.9.3, which PyPI has only as a source archive, so its wheel is built
  here), plus PyYAML (cp312 manylinux), tqdm and packaging in case the machine lacks them (pip
  keeps an installed version that satisfies the requirement);
* the project's own wheel, built from the files a clone would have;
* xformers, only if its newest build accepts the target torch and fits the size budget;
  ``XFORMERS.txt`` says what was decided and why, and the run records it;
* ``PREPARED.txt``: source commit, target, every file and its size.

The device machine takes at most 64 MiB with the working tree, so the script fails when the
tree plus the folder exceed that (the pretrained-model wheel, about 83 MB, can never come).

``--from-installed`` builds the pure-Python wheels from this interpreter's installed packages
instead of downloading them (binary wheels and xformers are left out): the tests use it, and it
serves a machine without PyPI access whose environment already holds them.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import importlib.metadata as md
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = ROOT / "gpu_wheels"
MIB = 2**20
BUDGET_MIB = 64  # the device tool's limit on the working tree plus carried folders

#: (distribution, requirement). Kept in step with pyproject's dependencies (a test checks);
#: antlr4 is the 4.9 runtime that hydra-core 1.3 and omegaconf 2.3 pin (its parsers need it).
REQUIREMENTS: list[tuple[str, str]] = [
    ("hydra-core", "hydra-core>=1.3.2,<1.4"),
    ("omegaconf", "omegaconf>=2.3,<2.4"),
    ("antlr4-python3-runtime", "antlr4-python3-runtime==4.9.3"),
    ("PyYAML", "PyYAML>=5.1"),
    ("tqdm", "tqdm>=4.60"),
    ("packaging", "packaging>=20"),
    # flash-linear-attention's kernels (fla-core: the ops, no models), the CUDA backend of
    # retention and deltanet; pure Python (Triton comes with the CUDA torch)
    ("fla-core", "fla-core>=0.5"),
    ("einops", "einops>=0.6"),
]
#: What the GPU machine already has of the project's dependencies and their needs (a test
#: checks that every dependency in pyproject is here or in REQUIREMENTS).
GPU_PREINSTALLED = (
    "torch",
    "numpy",
    "pandas",
    "matplotlib",
    "scipy",
    "PyYAML",
    "tqdm",
    "packaging",
)
#: Wheel tags of the target: CPython 3.12 on x86-64 Linux (pip matches each manylinux N exactly).
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
KEEP_SUFFIXES = (".whl", ".txt")


def pip(*args: str) -> subprocess.CompletedProcess:
    """Run this interpreter's pip quietly; the caller checks ``returncode``."""
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def target_args(python_version: str) -> list[str]:
    """pip options selecting binary wheels for the target interpreter and platform."""
    args = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for plat in PLATFORMS:
        args += ["--platform", plat]
    return args


def clean_dest(dest: Path) -> None:
    """Empty ``dest`` (it holds only wheels and notes); refuse a folder holding anything else."""
    if dest.exists():
        other = [p for p in dest.iterdir() if p.is_dir() or p.suffix not in KEEP_SUFFIXES]
        if other:
            raise SystemExit(
                f"gpu_prepare: {dest} holds other files ({other[0].name}); not cleared"
            )
        shutil.rmtree(dest)
    dest.mkdir(parents=True)


def is_pure(wheel: Path) -> bool:
    """A wheel that runs on any Python 3 and platform (``py3-none-any``, ``py2.py3-none-any``)."""
    return wheel.name.endswith("-none-any.whl")


def fetch(requirement: str, dest: Path, python_version: str) -> str:
    """Download the binary wheel of ``requirement``; else build it here if it is pure Python."""
    got = pip("download", "--no-deps", *target_args(python_version), "-d", str(dest), requirement)
    if got.returncode == 0:
        return "downloaded"
    before = set(dest.glob("*.whl"))
    built = pip("wheel", "--no-deps", "-w", str(dest), requirement)
    new = set(dest.glob("*.whl")) - before
    if built.returncode != 0 or not new:
        raise SystemExit(f"gpu_prepare: no wheel for {requirement}:\n{got.stderr}{built.stderr}")
    if not all(is_pure(w) for w in new):
        for w in new:
            w.unlink()
        raise SystemExit(f"gpu_prepare: {requirement} has no wheel for the target and is not pure")
    return "built here from its source archive (pure Python)"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def repack_installed(name: str, dest: Path) -> Path | None:
    """Wheel of an installed pure-Python distribution, rebuilt from its installed files.

    Byte code, installer bookkeeping and scripts outside site-packages are left out (pip makes
    scripts again from ``entry_points.txt``); RECORD is written anew. Returns None for a
    distribution that is not pure Python (``Root-Is-Purelib`` false) or not installed.
    """
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return None
    if "root-is-purelib: true" not in (dist.read_text("WHEEL") or "").lower() or not dist.files:
        return None
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    files = [
        f
        for f in dist.files
        if not f.parts[0].startswith("..")
        and "__pycache__" not in f.parts
        and f.suffix != ".pyc"
        and f.name not in skip
    ]
    info = next(f.parts[0] for f in dist.files if f.parts[0].endswith(".dist-info"))
    stem = info.removesuffix(".dist-info")  # "<name>-<version>", as the installer spelled it
    wheel = dest / f"{stem}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            data = Path(dist.locate_file(f)).read_bytes()
            zf.writestr(f.as_posix(), data)
            record.append(f"{f.as_posix()},{_record_hash(data)},{len(data)}")
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def tree_files(root: Path) -> list[Path]:
    """Files that travel with the working tree: tracked and untracked-not-ignored, plus shared/."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    files = {root / name for name in out.decode().split("\0") if name}
    shared = root / "shared"
    if shared.is_dir():
        files.update(p for p in shared.rglob("*") if p.is_file())
    return sorted(p for p in files if p.is_file())


def project_wheel(root: Path, dest: Path) -> Path:
    """The project's wheel, built from a copy of the files a clone would have.

    A copy, so that a stale build/ or egg-info of the checkout cannot leak files into the wheel.
    Built with this environment's setuptools, which needs no network when it can make wheels
    itself (setuptools >= 70.1, or the ``wheel`` package); otherwise pip retries in an isolated
    build environment, fetching setuptools from the index.
    """
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        for path in tree_files(root):
            rel = path.relative_to(root)
            if rel.parts[0] == "shared":
                continue
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / rel)
        before = set(dest.glob("attnbench-*.whl"))
        got = pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dest), str(src))
        if got.returncode != 0:
            got = pip("wheel", "--no-deps", "-w", str(dest), str(src))
        new = set(dest.glob("attnbench-*.whl")) - before
        if got.returncode != 0 or not new:
            raise SystemExit(f"gpu_prepare: the project's wheel failed:\n{got.stderr}")
        return new.pop()


def wheel_metadata(wheel: Path) -> tuple[list[str], dict | None]:
    """``Requires-Dist`` lines of a wheel and xformers' ``cpp_lib.json`` build record, if any."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        build = next((n for n in names if n.endswith("xformers/cpp_lib.json")), None)
        build_info = json.loads(zf.read(build)) if build else None
    requires = [
        line.split(":", 1)[1].strip()
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    return requires, build_info


def xformers_verdict(
    requires: list[str], build_info: dict | None, torch_version: str, cuda_major: int
) -> tuple[bool, str]:
    """Whether an xformers wheel suits the target torch, and what to record about it.

    The wheel is taken when its torch requirement accepts ``torch_version``. A C++/CUDA
    extension built for another CUDA major is noted, not refused: xformers then falls back to
    PyTorch's own flash kernels for fp16/bf16, and the run records what xformers reports.
    """
    from packaging.requirements import Requirement

    torch_reqs = [Requirement(r) for r in requires if Requirement(r).name == "torch"]
    for req in torch_reqs:
        if req.marker is None and not req.specifier.contains(torch_version, prereleases=True):
            return (
                False,
                f"requires torch{req.specifier}; the GPU machine has torch {torch_version}",
            )
    note = "requires " + (", ".join(f"torch{r.specifier}" for r in torch_reqs) or "any torch")
    if build_info:
        version = build_info.get("version", {})
        cuda = version.get("cuda")
        note += f"; its C++/CUDA extension was built with torch {version.get('torch')}"
        if cuda:
            note += f", CUDA {cuda // 100}.{cuda % 100}"
            if cuda // 100 != cuda_major:
                note += (
                    f". The GPU machine's torch uses CUDA {cuda_major}: the extension may not "
                    "load there, and xformers then serves fp16/bf16 through PyTorch's flash "
                    "kernels only (the run records `python -m xformers.info`)"
                )
    return True, note


def add_xformers(dest: Path, args: argparse.Namespace, room: int) -> str:
    """Download xformers into ``dest`` when it suits the target and fits; return the verdict."""
    spec = f"xformers=={args.xformers_version}" if args.xformers_version else "xformers"
    with tempfile.TemporaryDirectory() as tmp:
        got = pip("download", "--no-deps", *target_args(args.python_version), "-d", tmp, spec)
        wheels = list(Path(tmp).glob("*.whl"))
        if got.returncode != 0 or not wheels:
            return f"skipped: no {spec} wheel for CPython {args.python_version} x86-64"
        wheel = wheels[0]
        ok, note = xformers_verdict(*wheel_metadata(wheel), args.torch, args.cuda)
        size = wheel.stat().st_size
        if not ok:
            return f"skipped: {wheel.name} {note}"
        if size > room:
            return (
                f"skipped: {wheel.name} is {size / MIB:.1f} MiB and only {room / MIB:.1f} MiB "
                f"of the {BUDGET_MIB} MiB budget is left"
            )
        shutil.copy2(wheel, dest / wheel.name)
        return f"included: {wheel.name} ({size / MIB:.1f} MiB); {note}"


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def source_line(root: Path) -> str:
    """Commit of the checkout and whether its tree differs from it."""

    def git(*a: str) -> str:
        got = subprocess.run(["git", *a], cwd=root, capture_output=True, text=True)
        return got.stdout.strip() if got.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = " (with uncommitted changes)" if git("status", "--porcelain") else ""
    return f"{commit}{dirty}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="wheel folder")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    parser.add_argument("--torch", default="2.11.0", help="the GPU machine's torch version")
    parser.add_argument("--cuda", type=int, default=13, help="CUDA major of that torch")
    parser.add_argument("--xformers-version", help="pin xformers (default: the newest)")
    parser.add_argument("--no-xformers", action="store_true", help="leave xformers out")
    parser.add_argument(
        "--from-installed",
        action="store_true",
        help="download nothing: rebuild the pure-Python wheels from this environment",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dest = args.dest.resolve()
    clean_dest(dest)
    lines = []
    for name, requirement in REQUIREMENTS:
        if args.from_installed:
            wheel = repack_installed(name, dest)
            how = (
                f"rebuilt from the installed {wheel.name}"
                if wheel
                else "left out (not installed here, or not pure Python)"
            )
        else:
            how = fetch(requirement, dest, args.python_version)
        lines.append(f"{requirement}: {how}")
        print(f"gpu_prepare: {lines[-1]}")
    wheel = project_wheel(ROOT, dest)
    print(f"gpu_prepare: project wheel {wheel.name}")
    tree = sum(p.stat().st_size for p in tree_files(ROOT))
    room = BUDGET_MIB * MIB - tree - folder_bytes(dest) - 64 * 1024  # leave room for the notes
    if args.no_xformers or args.from_installed:
        xformers = "skipped: not requested (--no-xformers or --from-installed)"
    else:
        xformers = add_xformers(dest, args, room)
    print(f"gpu_prepare: xformers {xformers}")
    (dest / "XFORMERS.txt").write_text(f"xformers {xformers}\n")
    target = (
        f"CPython {args.python_version} on x86-64 Linux, torch {args.torch} (CUDA {args.cuda})"
    )
    listing = [f"  {p.name}  {p.stat().st_size / MIB:.2f} MiB" for p in sorted(dest.glob("*.whl"))]
    manifest = [
        f"prepared: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} by {sys.executable}",
        f"source: {source_line(ROOT)}",
        f"target: {target}",
        *lines,
        f"xformers {xformers}",
        "wheels:",
        *listing,
    ]
    (dest / "PREPARED.txt").write_text("\n".join(manifest) + "\n")
    total = tree + folder_bytes(dest)
    print(
        f"gpu_prepare: {dest} holds {folder_bytes(dest) / MIB:.2f} MiB; with the working tree "
        f"({tree / MIB:.2f} MiB) {total / MIB:.2f} of {BUDGET_MIB} MiB"
    )
    if total > BUDGET_MIB * MIB:
        print(f"gpu_prepare: over the {BUDGET_MIB} MiB the device machine takes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
