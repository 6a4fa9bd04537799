"""Packages for setuptools: the code packages, and ``conf/`` shipped as ``harness.conf``.

The Hydra configs live at the top level (``conf/``) and install as the package ``harness.conf``
(a package-dir mapping), so a plain ``pip install .`` runs ``attnbench`` from any directory.
Everything else about the distribution is in ``pyproject.toml``.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["variants*", "harness*", "hydra_plugins*"]),
        "harness.conf",
    ],
    package_dir={"harness.conf": "conf"},
    package_data={"harness.conf": ["*.yaml", "**/*.yaml"]},
)
