"""A backup drill's state: its phases with their transition table, the run in progress, each uplink's timetable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from failoverd.engine.effects import Cause, DrillVerdict


class DrillPhase(Enum):
    IDLE = "idle"
    ACTIVATING = "activating"  # the drill switched a cold uplink on; waiting for it to pass traffic
    CHECKING = "checking"  # counting probe rounds through the uplink


P = DrillPhase
DRILL_TRANSITIONS: Mapping[DrillPhase, frozenset[DrillPhase]] = {
    P.IDLE: frozenset({P.ACTIVATING, P.CHECKING}),
    P.ACTIVATING: frozenset({P.CHECKING, P.IDLE}),
    P.CHECKING: frozenset({P.IDLE}),
}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    value: float | None
    unit: str
    ok: bool


@dataclass(frozen=True, slots=True)
class DrillRun:
    """The drill in progress (at most one per gateway)."""

    uplink: str
    phase: DrillPhase
    started: float
    by: str  # "schedule" or who asked
    activated: bool  # the drill switched the uplink on, so it switches it off
    verified_before: float | None = None  # the uplink's proof of working when the drill began
    activating_since: float | None = None  # when the uplink entered ACTIVATING: its activation is timed from here
    active_at: float | None = None  # when the uplink passed traffic
    first_answer: float | None = None
    results: Mapping[str, int] = field(default_factory=dict)  # per probe, while CHECKING
    lost: int = 0
    rtt_sum: float = 0.0
    rtt_count: int = 0
    bytes: int = 0
    checks: tuple[Check, ...] = ()
    # The canary's probes (DrillSpec.canary), counted apart from the uplink's own while CHECKING.
    canary_results: int = 0
    canary_lost: int = 0
    canary_rtt_sum: float = 0.0
    canary_rtt_count: int = 0


@dataclass(frozen=True, slots=True)
class DrillResult:
    verdict: DrillVerdict
    at: float
    cause: Cause
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True, slots=True)
class DrillSchedule:
    """One drilled uplink's timetable and its last result."""

    due_at: float | None = None  # monotonic; None: waiting for a window
    closes: float | None = None  # the window's end (window drills)
    window: float | None = None  # the wall-clock opening this timetable is for (its identity)
    window_done: bool = False  # this window had its drill
    last: DrillResult | None = None
    verified_at: float | None = None  # last pass: the uplink was proven good then
    postponed: str | None = None  # why the due drill waits, while it does
    alarmed: bool = False  # the drill-failed alarm is raised: the next pass clears it (drill-passed)
