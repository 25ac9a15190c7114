"""Hypothesis settings for seeded coverage runs: do the generators reach what a property needs to watch?"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from hypothesis import HealthCheck, Phase, seed, settings

F = TypeVar("F", bound=Callable[..., object])

SEED = 20261202
# Counted, not shrunk: a coverage run asks how often something happens over a fixed draw, so it
# generates only, keeps no example database, and lets no health check stop it half-way.
COVERAGE_RUN = settings(
    database=None,
    derandomize=False,
    phases=[Phase.generate],
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def seeded_run(max_examples: int) -> Callable[[F], F]:
    """Decorate a `@given` function: `max_examples` examples drawn from SEED with COVERAGE_RUN."""

    def wrap(test: F) -> F:
        return seed(SEED)(settings(COVERAGE_RUN, max_examples=max_examples)(test))

    return wrap
