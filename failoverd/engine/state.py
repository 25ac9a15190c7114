"""Engine state: immutable records, and an uplink's two state machines written as transition tables."""

# An uplink has two independent states. Its health (UNKNOWN, UP, DEGRADED, DOWN) is the verdict on the
# evidence; its lifecycle says whether it is in service at all: a hot uplink is always ACTIVE, a cold
# one goes STANDBY -> ACTIVATING -> ACTIVE and back, or FAILED when activation does not work. Only an
# ACTIVE uplink is judged; leaving service voids the verdict (health UNKNOWN again). Every move either
# may make is listed in its table; code that wants one the table does not list has a bug, and
# `judge()` or `switch()` raises. Operators see one word for both (`UplinkState.status`).

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Literal, NamedTuple

from failoverd.engine.drillstate import DrillResult, DrillSchedule
from failoverd.engine.effects import Cause, Route
from failoverd.engine.events import ClockState
from failoverd.engine.modemstate import ModemView
from failoverd.errors import EngineBug
from failoverd.policy.model import Policy

if TYPE_CHECKING:
    from failoverd.engine.alarms import ActiveAlarm, CarriedAlarm
    from failoverd.engine.drillstate import DrillRun, DrillSchedule


class Health(Enum):
    UNKNOWN = "UNKNOWN"  # no evidence yet (and every uplink out of service)
    UP = "UP"
    DEGRADED = "DEGRADED"  # usable, but RTT, jitter or loss beyond the policy's thresholds
    DOWN = "DOWN"


class Lifecycle(Enum):
    ACTIVE = "ACTIVE"  # in service: every hot uplink, and a cold one that is up
    STANDBY = "STANDBY"  # cold uplink, deliberately off
    ACTIVATING = "ACTIVATING"  # cold uplink being brought up
    FAILED = "FAILED"  # cold uplink whose activation failed


H = Health
HEALTH_TRANSITIONS: Mapping[Health, frozenset[Health]] = {
    H.UNKNOWN: frozenset({H.UP, H.DEGRADED, H.DOWN}),
    H.UP: frozenset({H.DEGRADED, H.DOWN}),
    H.DEGRADED: frozenset({H.UP, H.DOWN}),
    H.DOWN: frozenset({H.UP, H.DEGRADED}),
}
L = Lifecycle
LIFECYCLE_TRANSITIONS: Mapping[Lifecycle, frozenset[Lifecycle]] = {
    L.ACTIVE: frozenset({L.STANDBY}),
    L.STANDBY: frozenset({L.ACTIVATING}),
    L.ACTIVATING: frozenset({L.ACTIVE, L.FAILED, L.STANDBY}),
    L.FAILED: frozenset({L.ACTIVATING, L.STANDBY}),
}
USABLE = frozenset({H.UP, H.DEGRADED})


class Sample(NamedTuple):
    """One probe result in a target's window. A named tuple rather than a frozen dataclass: one is
    made for every probe result, and a named tuple is the cheaper to build."""

    t: float
    ok: bool
    rtt: float | None


@dataclass(frozen=True, slots=True)
class TargetState:
    """One probe target's recent history inside the uplink's window."""

    samples: tuple[Sample, ...] = ()
    losses: int = 0  # consecutive
    successes: int = 0  # consecutive
    failed: bool = False
    failed_cause: str = ""
    lost_in_window: int = 0  # samples in `samples` that were losses, kept as samples come and go
    rtt_sum: float = 0.0  # of the answered samples' RTTs in `samples`, kept likewise
    rtt_count: int = 0


@dataclass(frozen=True, slots=True)
class UplinkState:
    health: Health
    since: float  # of the current status (health or lifecycle, whichever changed last)
    cause: Cause
    lifecycle: Lifecycle = Lifecycle.ACTIVE
    carrier: bool = True
    targets: Mapping[str, TargetState] = field(default_factory=dict)
    fresh_successes: int = 0  # probe successes since the last time it went DOWN
    clear_since: float | None = None  # the down condition has been clear since
    degraded_clear_since: float | None = None
    usable_since: float | None = None  # start of the current usable (UP or DEGRADED) stretch
    up_since: float | None = None  # start of the current UP stretch: preempt delay for classes avoiding DEGRADED
    # RFC 2439 figure of merit: the penalty as of penalty_at, decaying with the half-life.
    penalty: float = 0.0
    penalty_at: float = 0.0
    suppressed: bool = False
    suppressed_at: float | None = None
    activated: bool = False  # a cold uplink whose activate action succeeded
    activation_deadline: float | None = None
    retry_at: float | None = None
    idle_since: float | None = None  # a cold uplink no class needs, since
    # The proof that the uplink works: the last monotonic instant it was seen UP (refreshed on every
    # move into or out of UP, and by a drill through mark_verified); None: never, as far as this run
    # and the state dir know. While it is UP, it is verified now (see redundancy.last_verified).
    verified_at: float | None = None
    tracked_since: float = 0.0  # the uplink has been watched since (ages a proof that never came)
    verify_stale: bool = False  # the proof is older than the policy's verify.within: alarm raised
    # The modem's profile has failed (denied, searching too long) or is being switched
    # (engine/profiles.py): the uplink is DOWN for that cause whatever its probes say.
    modem_down: Cause | None = None

    @property
    def status(self) -> str:
        """The one word operators see: the health of an uplink in service, else where its lifecycle is."""
        return self.health.value if self.lifecycle is Lifecycle.ACTIVE else self.lifecycle.value

    @property
    def unjudged(self) -> bool:
        """In service but without evidence yet (as after a start or restart)."""
        return self.lifecycle is Lifecycle.ACTIVE and self.health is Health.UNKNOWN


def _enter(u: UplinkState, lifecycle: Lifecycle, health: Health, now: float, cause: Cause) -> UplinkState:
    usable = health in USABLE
    usable_since = (u.usable_since if u.health in USABLE else now) if usable else None
    up_since = (u.up_since if u.health is Health.UP else now) if health is Health.UP else None
    # Into UP, and out of it: either way the uplink was seen working at this instant.
    verified_at = now if Health.UP in (health, u.health) else u.verified_at
    return replace(
        u,
        health=health,
        lifecycle=lifecycle,
        since=now,
        cause=cause,
        usable_since=usable_since,
        up_since=up_since,
        verified_at=verified_at,
    )


def mark_verified(u: UplinkState, now: float) -> UplinkState:
    """The uplink was proven to work at `now` by other means than its own probes (a drill's canary)."""
    return replace(u, verified_at=now if u.verified_at is None else max(u.verified_at, now))


def judge(u: UplinkState, new: Health, now: float, cause: Cause) -> UplinkState:
    """The evidence gives an uplink in service a new health."""
    if u.lifecycle is not Lifecycle.ACTIVE or new not in HEALTH_TRANSITIONS[u.health]:
        raise EngineBug(f"illegal uplink transition {u.status} -> {new.value} ({cause})")
    return _enter(u, u.lifecycle, new, now, cause)


def switch(u: UplinkState, new: Lifecycle, now: float, cause: Cause) -> UplinkState:
    """A cold uplink moves in its lifecycle; whatever was known of its health no longer holds."""
    if new not in LIFECYCLE_TRANSITIONS[u.lifecycle]:
        raise EngineBug(f"illegal uplink transition {u.status} -> {new.value} ({cause})")
    return _enter(u, new, Health.UNKNOWN, now, cause)


@dataclass(frozen=True, slots=True)
class ClassState:
    uplink: str | None
    route: Route
    since: float
    cause: Cause
    by_override: str | None = None  # the override id that put it here
    exposed: bool = False  # down to its last usable uplink, and its redundancy alarm is raised


# force: a class onto an uplink; drain: every class off an uplink; profile: a modem uplink on one profile
OverrideKind = Literal["force", "drain", "profile"]


@dataclass(frozen=True, slots=True)
class Override:
    id: str
    kind: OverrideKind
    cls: str | None  # for force
    uplink: str
    reason: str
    by: str
    created: float
    expires: float
    force: bool = False
    profile: str | None = None  # for profile (a default: overrides.json of earlier versions has none)
    group: str | None = None  # made by one command with the others of its group (a dual-stack twin's)

    def describe(self) -> str:
        what = {
            "force": f"class {self.cls} -> {self.uplink}",
            "drain": f"drain {self.uplink}",
            "profile": f"{self.uplink} on profile {self.profile}",
        }[self.kind]
        return f"{self.id} ({what}{', forced' if self.force else ''}: {self.reason!r} by {self.by})"


@dataclass(frozen=True, slots=True)
class ClockView:
    state: ClockState = ClockState.UNKNOWN
    bound: float | None = None
    since: float = 0.0
    evidence: tuple[str, ...] = ()
    wall_time: float | None = None  # evidence only: shown to operators, never used for a decision
    disagreeing_uplinks: frozenset[str] = frozenset()  # uplinks over which only falsetickers answer


@dataclass(frozen=True, slots=True)
class Restart:
    """What a start leaves for its first step to settle (step.py: `settle_restart`): the previous run
    may have died with a cold uplink switched on, or in the middle of a drill."""

    drill: DrillRun | None = None  # the drill the previous run was in, ended as aborted
    cause: Cause | None = None  # why it ended (with `drill`)


@dataclass(frozen=True, slots=True)
class EngineState:
    now: float
    uplinks: Mapping[str, UplinkState]
    classes: Mapping[str, ClassState]
    overrides: tuple[Override, ...] = ()
    clock: ClockView = ClockView()
    override_seq: int = 0
    # When a Tick may next change something (a hold-down, preempt delay, TTL or damping decay ends);
    # step() computes it so that the runtime can sleep until then instead of polling.
    wake_at: float | None = None
    # Cold uplinks pre-warmed for classes down to one usable uplink, and why (engine/redundancy.py).
    prewarm: Mapping[str, str] = field(default_factory=dict)
    drill: DrillRun | None = None  # the backup drill in progress (engine/drills.py)
    drills: Mapping[str, DrillSchedule] = field(default_factory=dict)  # per drilled uplink: when, last result
    alarms: Mapping[str, ActiveAlarm] = field(default_factory=dict)  # active alarms by id (engine/alarms.py)
    carried: Mapping[str, CarriedAlarm] = field(default_factory=dict)  # active when the last run ended
    restart: Restart | None = None  # set by restored_state, settled (and cleared) by the first step
    modems: Mapping[str, ModemView] = field(default_factory=dict)  # per uplink with profiles (engine/profiles.py)
    # When the first active alarm escalates or is repeated (engine/alarms.py: first_notification).
    notify_at: float | None = None

    def active_override(self, kind: OverrideKind, subject: str) -> Override | None:
        """The override of `kind` on `subject`: a class (force), an uplink (drain, profile)."""
        for o in self.overrides:
            if o.kind == kind and (o.cls if kind == "force" else o.uplink) == subject:
                return o
        return None


def override_applies(o: Override, policy: Policy) -> bool:
    """Whether the policy still has what the override names (its uplink, class, profile)."""
    spec = policy.uplinks.get(o.uplink)
    if spec is None or (o.cls is not None and o.cls not in policy.classes):
        return False
    if o.kind == "profile":
        return spec.modem is not None and o.profile in {p.name for p in spec.modem.profiles}
    return True


_START = Cause("start", "failoverd started; no evidence yet")
# The kernel routes a restarted daemon takes over as they are; anything else is left to the path.
_ADOPTABLE: Mapping[str, Route] = {"via": "via", "blackhole": "blackhole", "unreachable": "unreachable"}


def initial_uplink(cold: bool, now: float) -> UplinkState:
    if cold:
        cause = Cause("cold-standby", "cold standby, off until a class needs it")
        return UplinkState(Health.UNKNOWN, now, cause, Lifecycle.STANDBY, tracked_since=now)
    return UplinkState(Health.UNKNOWN, now, _START, tracked_since=now)


def initial_state(policy: Policy, now: float) -> EngineState:
    return EngineState(
        now=now,
        uplinks={name: initial_uplink(u.standby.cold, now) for name, u in policy.uplinks.items()},
        classes={name: ClassState(None, "pending", now, _START) for name in policy.classes},
    )


def restored_state(
    policy: Policy,
    now: float,
    adopted: Mapping[str, tuple[str | None, str]],
    overrides: tuple[Override, ...] = (),
    override_seq: int = 0,
    *,
    proofs: Mapping[str, tuple[float | None, float]] | None = None,
    drill: DrillRun | None = None,
    drills: Mapping[str, DrillSchedule] | None = None,
    carried: Mapping[str, CarriedAlarm] | None = None,
) -> EngineState:
    """The state after a restart: classes where the kernel still has them, overrides still in force,
    each uplink's proof of working (`proofs`: verified_at, tracked_since, on this run's clock), and
    each drilled uplink's timetable and last result (`drills`), all on this run's monotonic clock.

    Adopting what the kernel holds means a restart moves nothing by itself: the classes stay where
    the previous run left them until evidence (probes, carrier) says otherwise. A cold uplink a class
    is routed via is in service (ACTIVE, activated, not yet judged); every other cold uplink is
    STANDBY, and the first step sends it the standby 'off' command, as the previous run may have
    died with it on (pre-warm, production, a drill). `drill`, the drill the previous run was in, ends
    as aborted in that step; the proof of working it may have refreshed goes back to what it was.
    """
    state = initial_state(policy, now)
    if proofs:
        uplinks = dict(state.uplinks)
        for name, (verified_at, tracked_since) in proofs.items():
            if name in uplinks:
                uplinks[name] = replace(uplinks[name], verified_at=verified_at, tracked_since=min(tracked_since, now))
        state = replace(state, uplinks=uplinks)
    classes = dict(state.classes)
    for name, (uplink, kind) in adopted.items():
        route = _ADOPTABLE.get(kind)
        if name not in classes or route is None:
            continue
        if route == "via" and (
            uplink is None or uplink not in policy.uplinks or not policy.uplinks[uplink].admits(name)
        ):
            continue
        what = f"via {uplink}" if route == "via" else route
        classes[name] = ClassState(uplink, route, now, Cause("adopted", f"found {what} in the kernel at start"))
    kept = tuple(o for o in overrides if o.expires > now and override_applies(o, policy))
    uplinks = dict(state.uplinks)
    carrying: dict[str, list[str]] = {}
    for name, c in classes.items():
        if c.route == "via" and c.uplink is not None and policy.uplinks[c.uplink].standby.cold:
            carrying.setdefault(c.uplink, []).append(name)
    for name, users in carrying.items():
        # The previous run had it up (a class is routed only via an uplink in service): it still is,
        # and its probes judge it; re-activating it would void the evidence and start a deadline.
        text = f"class {', '.join(users)} routed via {name} in the kernel at start: kept in service"
        uplinks[name] = replace(uplinks[name], lifecycle=Lifecycle.ACTIVE, activated=True, cause=Cause("adopted", text))
    schedules = _restored_drills(policy, now, drills or {})
    cause = None
    if drill is not None and drill.uplink in policy.uplinks:
        cause = Cause(
            "drill-restart",
            f"failoverd restarted mid-drill ({drill.phase.value}, begun {now - drill.started:.0f}s before by "
            f"{drill.by}): drill of {drill.uplink} aborted",
            (("phase", drill.phase.value), ("by", drill.by)),
        )
        spec = policy.drills.get(drill.uplink)
        sch = schedules.get(drill.uplink, DrillSchedule())
        due = sch.due_at if spec is None else now + spec.retry_after
        # A window drill's retry is held as a postponement, or the window (sent again at every start)
        # would make the drill due at the window's opening again, at once.
        held = cause.text if spec is not None and spec.window is not None else sch.postponed
        schedules[drill.uplink] = replace(sch, due_at=due, last=DrillResult("aborted", now, cause), postponed=held)
        uplinks[drill.uplink] = replace(uplinks[drill.uplink], verified_at=drill.verified_before)
    else:
        drill = None
    return replace(
        state,
        uplinks=uplinks,
        classes=classes,
        overrides=kept,
        override_seq=override_seq,
        drills=schedules,
        restart=Restart(drill, cause),
        carried=dict(carried or {}),
    )


def _restored_drills(policy: Policy, now: float, saved: Mapping[str, DrillSchedule]) -> dict[str, DrillSchedule]:
    """The saved timetables of the drills the policy still has: an interval drill keeps its due time,
    but never further than one interval (and its offset) away, and is due at its offset if none was
    saved; a window drill keeps its window's identity, done or not, and a retry within it."""
    out: dict[str, DrillSchedule] = {}
    for name, spec in policy.drills.items():
        sch = saved.get(name)
        if sch is None:
            continue  # drills.advance starts its timetable, as on a first start
        if spec.every is not None:
            latest = now + spec.offset + spec.every
            every = now + spec.offset if sch.due_at is None else min(sch.due_at, latest)
            out[name] = replace(sch, due_at=every, closes=None, window=None, window_done=False)
        else:
            opening = sch.due_at if sch.window is not None else None
            out[name] = replace(sch, due_at=opening, closes=None)
    return out
