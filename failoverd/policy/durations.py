"""Durations as a policy, a timeline or a command writes them: `500ms`, `2s`, `5m`, `1h`, `1d` or seconds."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> object:
    """Accept seconds as a number or a string with a unit (`500ms`, `2s`, `5m`, `1h`, `1d`)."""
    if isinstance(value, bool):
        return value  # let the float validator refuse it with its own message
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m is None:
            raise ValueError(f"invalid duration {value!r}: write seconds (2, 0.5) or a value such as 500ms, 2s, 5m, 1h")
        return float(m.group(1)) * _UNIT[m.group(2)]
    return value
