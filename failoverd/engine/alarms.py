"""Alarms: conditions raised and cleared by the engine, each with an id, severity, cause and acknowledgement."""

# Theory of operation
# -------------------
# An alarm is a condition that holds for a while: an uplink down, a class on a backup or without a
# route, a class down to its last uplink, a cold standby that failed, the clock not trusted, a backup
# not verified or that failed its drill, an uplink damped. Its id is `<kind>:<subject>` (e.g.
# `uplink-down:fiber`), the same for as long as the condition lasts, so that everyone downstream (the
# history, MQTT, notifiers, an operator's acknowledgement) names one thing. The engine keeps the table
# of active alarms in its state: raising an id already active with the same severity does nothing
# (deduplication at the source), clearing one that is not active does nothing, and an operator's
# acknowledgement marks an active alarm (who, why, when) without clearing it: the condition still
# holds, only the people have been told. A one-off event that needs no clearing (an override expired,
# a deactivation command failed) is a *notice*: an Alarm effect with no id.
#
# The kinds are the policy's vocabulary (policy.model.AlarmKind: a route names them); their subjects and
# default severities are the engine's (ALARM_KINDS). Where the policy names a severity (redundancy.alarm,
# verify.alarm, a drill's severity, the clock's on_suspect/on_insane) it wins.
#
# Escalation and repeats are decisions in time, so they are the engine's too (and `simulate` shows
# them): an alarm a route sent to someone, raised and not acknowledged `after` an escalation step's
# delay, takes that step (an Alarm effect in state "escalated", with its level), and while it stays
# raised and unacknowledged it is "repeated" every `repeat`. An acknowledgement stops both. Who hears of which (routes,
# escalation steps' notifiers, delivery over a working uplink, retries) is the notifier service's.
# The first of those times is kept in the state (`notify_at`, also a wake-up): a step walks the
# active alarms for them only when it is due, or when the alarms or the policy changed (a raise, a
# new severity, an acknowledgement, a reload can each move it), not at every probe round.

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from failoverd.engine.effects import Cause, Severity
from failoverd.policy.model import AlarmKind, AlarmsSpec, Policy

ALARM_KINDS: Mapping[AlarmKind, tuple[str, Severity | None]] = {  # every one of policy.model.AlarmKind
    "uplink-down": ("uplink", "warning"),
    "uplink-degraded": ("uplink", "warning"),
    "damped": ("uplink", "warning"),
    "standby-failed": ("uplink", "critical"),
    "unverified": ("uplink", None),  # verify.alarm
    "drill-failed": ("uplink", None),  # the drill's severity
    "class-backup": ("class", "warning"),
    "class-down": ("class", "critical"),
    "redundancy": ("class", None),  # redundancy.alarm
    "clock": ("clock", None),  # clock.on_suspect / on_insane
    # From the shell (events.ServiceAlarm):
    "mqtt-unreachable": ("service", "warning"),  # the broker out of reach for longer than mqtt.UNREACHABLE_AFTER
    "reload-refused": ("service", "warning"),  # the file on disk is not the policy in force
}
# What an alarm's subject names, by kind as an alarm carries it (a string, alarms.json's too).
SUBJECT_OF: Mapping[str, str] = {kind: subject for kind, (subject, _) in ALARM_KINDS.items()}


@dataclass(frozen=True, slots=True)
class CarriedAlarm:
    """An alarm that was active when the last run ended (the state dir's alarms.json): when its
    condition is seen again after the restart it *resumes*, with its age and acknowledgement, rather
    than being raised anew (people were told of it already). Kept until `until` only: a condition
    that ended while failoverd was down is not seen again, and its alarm is simply gone."""

    raised: float  # monotonic, on this run's clock (its age carried over)
    until: float  # monotonic: forgotten then if not seen again
    acked_by: str | None = None
    ack_reason: str | None = None


CARRY_FOR = 120.0  # s after a start: long enough for the probes to judge every uplink again


def alarm_id(kind: str, subject: str) -> str:
    return f"{kind}:{subject}"


def next_notification(a: ActiveAlarm, spec: AlarmsSpec) -> float | None:
    """When an unacknowledged alarm someone was told of next escalates or is repeated (None: not at all)."""
    escalation, repeat = spec.escalation, spec.repeat
    if a.acked_by is not None or not spec.notify(a.severity, a.kind, a.subject):
        return None
    times = []
    if a.level < len(escalation):
        times.append(a.raised + escalation[a.level][0])
    if repeat is not None:
        times.append((a.notified_at if a.notified_at is not None else a.raised) + repeat)
    return min(times) if times else None


def first_notification(alarms: Iterable[ActiveAlarm], spec: AlarmsSpec) -> float | None:
    """When the first of these alarms escalates or is repeated (None: none will, as things stand)."""
    if not spec.escalation and spec.repeat is None:
        return None
    return min((t for a in alarms if (t := next_notification(a, spec)) is not None), default=None)


def primary_uplink(policy: Policy, cls: str) -> str | None:
    """The first uplink of a class's path that admits it: anywhere else, the class is on a backup."""
    spec = policy.classes[cls]
    return next((n for n in spec.path if n in policy.uplinks and policy.uplinks[n].admits(cls)), None)


@dataclass(frozen=True, slots=True)
class ActiveAlarm:
    id: str
    kind: str
    subject: str
    severity: Severity
    raised: float  # monotonic
    cause: Cause
    acked_by: str | None = None
    acked_at: float | None = None
    ack_reason: str | None = None
    level: int = 0  # escalation steps taken (alarms.escalation), while not acknowledged
    notified_at: float | None = None  # the last time people were told (raised, escalated, repeated)

    def as_dict(self, now: float) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "subject": self.subject,
            "severity": self.severity,
            "age_s": round(now - self.raised, 1),
            "cause": self.cause.as_dict(),
            "level": self.level,
            "acked": None
            if self.acked_by is None
            else {
                "by": self.acked_by,
                "reason": self.ack_reason,
                "age_s": None if self.acked_at is None else round(now - self.acked_at, 1),
            },
        }
