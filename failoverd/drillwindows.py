"""Weekly drill windows on the wall clock (UTC) → the next opening: the shell and the simulator both ask here."""

# The engine never reads the wall clock: the drill service (and `failoverd simulate`) turn the next
# opening into monotonic times with this, and hand them over as a DrillWindow event. A clock step
# changes the answer, and the service sends the window again; the engine postpones window drills
# while the clock checker does not trust the clock.

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from failoverd.engine.events import DrillWindow
from failoverd.policy.model import WindowSpec


def next_opening(window: WindowSpec, wall: float) -> tuple[float, float]:
    """The window open at `wall`, or else the next one to open: (start, end), wall-clock seconds."""
    midnight = datetime.fromtimestamp(wall, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    best: tuple[float, float] | None = None
    for days in range(-1, 8):  # yesterday's window may run past midnight into today
        day = midnight + timedelta(days=days)
        if day.weekday() not in window.days:
            continue
        start = (day + timedelta(minutes=window.start)).timestamp()
        end = start + window.length
        if end > wall and (best is None or start < best[0]):
            best = (start, end)
    if best is None:  # unreachable: a window names at least one day of the week
        raise ValueError(f"window {window.text} names no day")
    return best


def window_event(uplink: str, window: WindowSpec, wall: float, mono: float) -> DrillWindow:
    """The next opening as the engine takes it: monotonic times, the wall-clock opening as its name."""
    start, end = next_opening(window, wall)
    return DrillWindow(uplink, mono + (start - wall), mono + (end - wall), start)
