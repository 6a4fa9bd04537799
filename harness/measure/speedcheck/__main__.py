"""``python -m harness.measure.speedcheck``: the ``attnbench-speedcheck`` command."""

from harness.measure.speedcheck.cli import main

main()
