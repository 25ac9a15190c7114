"""Shared test fixtures and paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def root() -> Path:
    return ROOT


# Hypothesis profiles. `ci` (the default, `make test`): a fixed, derandomized run with no example
# database, so a CI result does not depend on an earlier run, and the fuzz targets together cost a few
# seconds. `fuzz` (`make fuzz`): random, FUZZ_FACTOR times the examples (tests/fuzz/budget.py), with
# the database in .hypothesis/ so a failure found once is tried first the next time.
settings.register_profile(
    "ci", deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("fuzz", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
