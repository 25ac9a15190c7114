"""A modem uplink's profile state: the phases and their transition table, and the view the engine keeps."""

# The rules that move it are in profiles.py (its theory of operation); this module holds only the
# records, so that state.py can hold them without importing the rules.

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from failoverd.engine.effects import Cause


class Phase(Enum):
    UNKNOWN = "UNKNOWN"
    ATTACHING = "ATTACHING"
    SERVING = "SERVING"
    FAILED = "FAILED"
    SWITCHING = "SWITCHING"


P = Phase
PHASE_TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    P.UNKNOWN: frozenset({P.ATTACHING, P.SERVING, P.FAILED, P.SWITCHING}),  # SWITCHING: on a SIM no profile names
    P.ATTACHING: frozenset({P.SERVING, P.FAILED, P.SWITCHING}),  # SWITCHING: an operator's pin
    P.SERVING: frozenset({P.ATTACHING, P.FAILED, P.SWITCHING}),  # SWITCHING: failback
    P.FAILED: frozenset({P.SWITCHING, P.SERVING}),  # SERVING: the modem or its data came back by itself
    P.SWITCHING: frozenset({P.ATTACHING, P.FAILED}),
}


@dataclass(frozen=True, slots=True)
class ModemView:
    """One modem uplink's active profile, its phase, and the modem's last evidence."""

    profile: str
    phase: Phase
    since: float
    cause: Cause
    registration: str = "unknown"
    operator: str | None = None
    access: str | None = None
    signal: int | None = None
    bearer: bool = False
    searching_since: float | None = None  # not registered since
    target: str | None = None  # the profile a switch in flight moves to
    switch_deadline: float | None = None
    failed_at: Mapping[str, float] = field(default_factory=dict)  # per profile: its last failure
    failures: Mapping[str, int] = field(default_factory=dict)  # per profile: failures in a row
    held: str = ""  # the switch being held (switch-deferred recorded once per hold)
    adopted_at: float | None = None  # found on this (not the first) profile at start: failback counts from here
