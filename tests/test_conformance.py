"""The conformance kit over every registered variant (built-ins and installed plugins)."""

import pytest

import variants
from harness.conformance import CHECKS


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("name", variants.available())
def test_conformance(name: str, check: str) -> None:
    CHECKS[check](name)
