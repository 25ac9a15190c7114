"""Effects the engine asks the runtime to carry out; each carries the cause that produced it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from failoverd.policy.model import CommandSpec

Route = Literal["via", "blackhole", "unreachable", "pending"]
Severity = Literal["info", "warning", "critical"]


@dataclass(frozen=True, slots=True)
class Cause:
    """Why something changed: a stable code for machines, a sentence for people, and the evidence."""

    code: str
    text: str
    evidence: tuple[tuple[str, str], ...] = field(default=())

    def __str__(self) -> str:
        return f"{self.code}: {self.text}"

    def as_dict(self) -> dict[str, object]:
        return {"code": self.code, "text": self.text, "evidence": dict(self.evidence)}


@dataclass(frozen=True, slots=True)
class SwitchClass:
    """Desired forwarding for a class changed: via an uplink, or blackhole/unreachable."""

    cls: str
    from_uplink: str | None
    to_uplink: str | None
    route: Route
    cause: Cause


@dataclass(frozen=True, slots=True)
class WithdrawClass:
    """A class left the policy: remove its rules and table."""

    cls: str
    cause: Cause


@dataclass(frozen=True, slots=True)
class FlushConntrack:
    """Forget this class's flows that used `uplink` (their NAT source is wrong on the new path)."""

    cls: str
    uplink: str
    cause: Cause


@dataclass(frozen=True, slots=True)
class ActivateStandby:
    uplink: str
    command: CommandSpec | None
    cause: Cause


@dataclass(frozen=True, slots=True)
class DeactivateStandby:
    uplink: str
    command: CommandSpec | None
    cause: Cause


@dataclass(frozen=True, slots=True)
class UplinkChanged:
    uplink: str
    old: str
    new: str
    cause: Cause


@dataclass(frozen=True, slots=True)
class ClockReaction:
    """The clock state changed; features that depend on wall time are (dis)trusted accordingly."""

    old: str
    new: str
    distrust: frozenset[str]
    cause: Cause


AlarmState = Literal["raised", "resumed", "cleared", "acked", "escalated", "repeated", "notice"]


@dataclass(frozen=True, slots=True)
class Alarm:
    """An alarm raised, cleared or acknowledged (engine/alarms.py), or a notice: a one-off event that
    needs no clearing (an override expired, a deactivation failed), with no id."""

    severity: Severity
    subject: str
    cause: Cause
    id: str = ""  # "<kind>:<subject>", stable while the condition lasts; "" for a notice
    state: AlarmState = "notice"
    by: str = ""  # who acknowledged it
    level: int = 0  # escalated: the escalation step reached (1 = the policy's first)


DrillVerdict = Literal["pass", "fail", "aborted", "production"]


@dataclass(frozen=True, slots=True)
class DrillChanged:
    """A drill moved in its state machine (engine/drills.py); when it ends, with its verdict."""

    uplink: str
    old: str
    new: str
    cause: Cause
    verdict: DrillVerdict | None = None
    deactivated: bool = False  # the drill switched off what it had switched on


@dataclass(frozen=True, slots=True)
class DrillCheck:
    """One thing a drill measured, and whether it passed."""

    uplink: str
    check: str  # activation, first-answer, rtt, loss, rounds
    value: float | None
    unit: str
    ok: bool
    cause: Cause


@dataclass(frozen=True, slots=True)
class DrillPostponed:
    """A drill was due but it was not safe (or the clock not trusted) to run it."""

    uplink: str
    retry_at: float | None  # monotonic; None: at the next window
    cause: Cause


@dataclass(frozen=True, slots=True)
class RouteCanary:
    """A drill's canary table changed: via the drilled uplink while the drill checks it, unreachable
    otherwise. No class's route: the canary's drill-only mark selects the table (kernel/plan.py)."""

    uplink: str  # the drilled uplink, whose drill the canary belongs to
    via: str | None  # None: unreachable
    cause: Cause


SwitchHow = Literal["register", "slot"]


@dataclass(frozen=True, slots=True)
class SwitchProfile:
    """Move a cellular uplink's modem to another profile: re-register to its PLMN on the same SIM
    (`register`, cheap), or switch the SIM slot / eSIM profile first (`slot`, re-initialises the modem)."""

    uplink: str
    profile: str
    how: SwitchHow
    plmn: str | None  # the network to register to (None: automatic)
    apn: str
    cause: Cause


@dataclass(frozen=True, slots=True)
class ProfileChanged:
    """A modem's profile state machine moved (engine/profiles.py)."""

    uplink: str
    profile: str
    old: str
    new: str
    cause: Cause


@dataclass(frozen=True, slots=True)
class CommandReply:
    """The answer to an operator command: what changed, or why nothing did."""

    request: str
    ok: bool
    text: str
    changes: tuple[str, ...] = ()
    override: str | None = None
    by: str = ""  # who asked, as the command named them (the socket and MQTT say who that really was)


Effect = (
    SwitchClass
    | WithdrawClass
    | FlushConntrack
    | ActivateStandby
    | DeactivateStandby
    | UplinkChanged
    | ClockReaction
    | Alarm
    | CommandReply
    | DrillChanged
    | DrillCheck
    | DrillPostponed
    | RouteCanary
    | SwitchProfile
    | ProfileChanged
)
