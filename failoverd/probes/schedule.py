"""When probes go out: one round per interval on a grid of it; the daemon keeps it, the simulator replays it.

Pure (no clock, no socket): time comes in as arguments, so that `failoverd simulate` sends its probes
at the very ticks the daemon's round driver (probes/rounds.py) would, and detection times agree.

- Every probe of one interval belongs to one round, whatever its uplink or kind; the rounds of
  different intervals run side by side.
- A round's grid is the monotonic clock cut into whole intervals: the first tick is the first
  multiple of the interval at or after the start, each next one an interval later. An uplink's
  targets are probed in step at each tick, not spread over the interval: an uplink falls when a
  quorum of its targets have failed, and a spread would delay that by up to an interval.
- A probe is due back `timeout` after its round's tick (or after the moment it went out, if that
  was more than LATE_GRACE late), and declared lost then. (An answer the daemon reads at its round's
  next wakeup, the simulator as it arrives: answers only lead to recovery, never to a detection.)
- A round that fell a whole interval behind (a suspended or overloaded gateway) carries on from
  then, without a burst of the rounds it missed.
- Uplinks that are switched off (a cold standby at rest, or one whose activation failed) are not probed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from failoverd.engine.state import EngineState, Lifecycle
from failoverd.policy.model import ProbeSpec, UplinkSpec

LATE_GRACE = 0.002  # s: a round sent this late still counts from its tick (timeouts shrink by as much)


def rounds(uplinks: Mapping[str, UplinkSpec]) -> dict[float, list[tuple[str, ProbeSpec]]]:
    """The probes sent together, by interval: (uplink, probe) in policy order."""
    by_interval: dict[float, list[tuple[str, ProbeSpec]]] = {}
    for name, u in uplinks.items():
        for spec in u.probes:
            by_interval.setdefault(spec.interval, []).append((name, spec))
    return by_interval


def first_tick(interval: float, now: float) -> float:
    """The first point of the interval's grid at or after `now`."""
    return math.ceil(now / interval) * interval


def round_start(tick: float, sent: float) -> float:
    """What a round sent at `sent` for `tick` counts its timeouts from."""
    return tick if sent - tick <= LATE_GRACE else sent


def next_tick(tick: float, interval: float, sent: float) -> float:
    """The tick after `tick`, for a round that went out at `sent`."""
    return max(tick + interval, sent)


def probed(state: EngineState, uplink: str) -> bool:
    """Whether the uplink is probed now: not while it is deliberately off or failed to come up."""
    u = state.uplinks.get(uplink)
    return u is not None and u.lifecycle not in (Lifecycle.STANDBY, Lifecycle.FAILED)
