"""How many examples a fuzz test runs: its CI count, times FUZZ_FACTOR under `make fuzz`."""

from __future__ import annotations

import os

FUZZ = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
FACTOR = int(os.environ.get("FUZZ_FACTOR", "50")) if FUZZ else 1


def examples(ci: int) -> int:
    """`ci` examples in `make test`; FUZZ_FACTOR times as many in `make fuzz`."""
    return ci * FACTOR
