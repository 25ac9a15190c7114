"""Events the engine consumes: everything that happens to a gateway, as plain frozen records."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal, NamedTuple


class ClockState(Enum):
    """The clock checker's verdict on the wall clock (see research/CLOCK.md)."""

    UNKNOWN = "unknown"
    SANE = "sane"
    HOLDOVER = "holdover"
    SUSPECT = "suspect"
    INSANE = "insane"


class ProbeResult(NamedTuple):
    """One probe's answer (or its absence at the deadline), as seen at `now`.

    A named tuple rather than a frozen dataclass, like `Sample`: one is made for every probe the
    daemon sends, and a named tuple is the cheaper to build."""

    uplink: str
    probe: str  # ProbeSpec.key
    ok: bool
    rtt: float | None = None  # seconds
    at: float | None = None  # when it was known (monotonic), if earlier than the step that folds it in


@dataclass(frozen=True, slots=True)
class ProbeBatch:
    """Probe results that arrived together, folded in one step, so that the per-step work (re-judging,
    choosing paths) is done once per batch rather than for every single answer."""

    results: tuple[ProbeResult, ...]


@dataclass(frozen=True, slots=True)
class CarrierChanged:
    uplink: str
    up: bool


@dataclass(frozen=True, slots=True)
class CarrierBatch:
    """Carrier changes that are one fact, folded in one step: the twins of a dual-stack uplink
    (policy/compile.py) ride one device, whose carrier is both families' at the same instant. Stepped
    one by one, the second family's move would wait for the first one's whole step: its kernel write
    and the state files it saves (alarms.json, fsynced), milliseconds of the second family's stream
    sent into a dead link."""

    changes: tuple[CarrierChanged, ...]


@dataclass(frozen=True, slots=True)
class StandbyResult:
    """The outcome of a cold-standby activate/deactivate action the runtime ran."""

    uplink: str
    action: Literal["activate", "deactivate"]
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ForceClass:
    """Operator: put a class on an uplink for `ttl` seconds."""

    request: str
    cls: str
    uplink: str
    reason: str
    ttl: float | None = None
    force: bool = False  # pin it there even if the uplink is down
    by: str = "operator"
    group: str | None = None  # the operator command it is one of: a dual-stack class's two twins share one


@dataclass(frozen=True, slots=True)
class DrainUplink:
    """Operator: move every class off an uplink for `ttl` seconds (maintenance, suspected fault)."""

    request: str
    uplink: str
    reason: str
    ttl: float | None = None
    force: bool = False  # drain even if a class is left with no uplink
    by: str = "operator"
    group: str | None = None  # the operator command it is one of: a dual-stack uplink's two twins share one


@dataclass(frozen=True, slots=True)
class PinProfile:
    """Operator: keep a cellular uplink's modem on one profile for `ttl` seconds (`failoverctl modem use`)."""

    request: str
    uplink: str
    profile: str
    reason: str
    ttl: float | None = None
    force: bool = False  # pin it even if the engine judges that profile failed
    by: str = "operator"


@dataclass(frozen=True, slots=True)
class Release:
    """Operator: end one override (by id) or all of them (override=None)."""

    request: str
    override: str | None
    by: str = "operator"


@dataclass(frozen=True, slots=True)
class ClockChanged:
    """The clock checker's new verdict. Wall time is evidence here, never an input to a timer."""

    state: ClockState
    bound: float | None = None  # seconds of error the checker cannot rule out
    evidence: tuple[str, ...] = ()
    wall_time: float | None = None
    disagreeing_uplinks: tuple[str, ...] = ()  # uplinks over which only falsetickers answered


@dataclass(frozen=True, slots=True)
class PolicyReloaded:
    """A new policy is now in force; it arrives as step()'s policy argument."""


@dataclass(frozen=True, slots=True)
class RunDrill:
    """Operator: drill a backup uplink now (refused, with the reason, when it is not safe)."""

    request: str
    uplink: str
    by: str = "operator"


@dataclass(frozen=True, slots=True)
class AckAlarm:
    """Operator: an active alarm has been seen and is being handled (it stays until its condition ends)."""

    request: str
    id: str
    reason: str
    by: str = "operator"


@dataclass(frozen=True, slots=True)
class ServiceAlarm:
    """A condition only the shell can see (the MQTT broker out of reach, a reload refused, the previous
    run's unclean end): raised, cleared, or a notice, as the engine's own alarms are."""

    kind: str
    subject: str
    state: Literal["raised", "cleared", "notice"]
    severity: Literal["info", "warning", "critical"]
    text: str


@dataclass(frozen=True, slots=True)
class DrillWindow:
    """The next opening of an uplink's weekly drill window, converted by the shell from the wall clock
    to monotonic time; `wall_opens` names the window, so that one opening is drilled once."""

    uplink: str
    opens: float  # monotonic
    closes: float  # monotonic
    wall_opens: float  # evidence and identity only, never a timer


Registration = Literal["home", "roaming", "searching", "denied", "idle", "unknown"]


@dataclass(frozen=True, slots=True)
class ModemState:
    """What a cellular uplink's modem reports (ModemManager: Modem3gpp.RegistrationState, OperatorCode,
    Modem.AccessTechnologies, SignalQuality, the bearer's Connected; StateFailedReason or the network's
    reject cause in `reason`), as the modem service (services/modem.py) reads it from ModemManager."""

    uplink: str
    registration: Registration
    operator: str | None = None  # MCCMNC it is registered to
    access: str | None = None  # lte, 5gnr, umts, ...
    signal: int | None = None  # percent
    bearer: bool = False  # a data bearer is connected
    reason: str = ""  # why registration failed or the network rejected it
    # Which SIM the modem uses (engine/profiles.py adopts the profile it is on at start from these):
    slot: int | None = None  # Modem.PrimarySimSlot, 1-based (a single-slot modem: 1); None: not known
    iccid: str | None = None  # the active SIM's Sim.SimIdentifier: on an eUICC, its enabled eSIM profile
    esim: bool = False  # the active SIM is an eUICC (Sim.SimType), so `iccid` names an eSIM profile


@dataclass(frozen=True, slots=True)
class ProfileSwitched:
    """The outcome of a SwitchProfile effect: the modem now uses `profile` (ok) or could not (detail)."""

    uplink: str
    profile: str
    ok: bool
    detail: str = ""
    unsupported: bool = False  # not ok because this ModemManager cannot do such a switch at all


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: timers (hold-down, preempt, damping, TTLs) may have expired."""


Command = ForceClass | DrainUplink | PinProfile | Release | RunDrill
Event = (
    ProbeResult
    | ProbeBatch
    | CarrierChanged
    | CarrierBatch
    | StandbyResult
    | ForceClass
    | DrainUplink
    | PinProfile
    | Release
    | ClockChanged
    | PolicyReloaded
    | RunDrill
    | AckAlarm
    | ServiceAlarm
    | DrillWindow
    | ModemState
    | ProfileSwitched
    | Tick
)
