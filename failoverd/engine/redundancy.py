"""Redundancy: how many uplinks of a class's path work now, how many more could, and how fresh that proof is."""

# Theory of operation
# -------------------
# A class's redundancy is read from the engine state alone. *Usable* uplinks are those of its path that
# admit it, are not drained, and are UP or DEGRADED (and not damped, with carrier): they could carry it
# now. *Standby* uplinks are the cold ones of the path that are not usable yet but are known good: not
# FAILED, not seen DOWN since their activation, and verified — seen UP (after an activation, or in a
# drill) recently enough for the uplink's `verify.within`. A cold uplink that is not known good is
# *unproven*: counting on it is what the 2019 outage did. How long a proof lasts is one number per
# uplink: `verify.within`, or for a drilled uplink without it its drill's `valid_for` (compiled into
# `verify` with no alarm, policy/compile.py proof_lifetime), so a drill's status and redundancy
# never disagree on whether the backup is still proven.
#
# A class whose policy asks for it raises an alarm when one usable uplink (or none) is left, and clears
# it when a second is usable again; a class that pre-warms has its path's first unproven-or-standby cold
# uplink activated as soon as one *terrestrial* (hot) usable uplink is left: counting the pre-warmed
# link itself would release it and warm it again in a loop. An uplink can ask the same for itself
# (`standby.prewarm`): it is warmed when any class it serves is down to one terrestrial uplink, whether
# or not it is the first cold one of that class's path (a second satellite, a modem of a third carrier).
# While a hot uplink of the path has no evidence yet (after a start), neither is judged: the first
# probe round must not ring an alarm.

from __future__ import annotations

from dataclasses import dataclass

from failoverd.engine.decide import drained, usable
from failoverd.engine.state import EngineState, Health, Lifecycle, UplinkState
from failoverd.policy.model import ClassSpec, Policy, UplinkSpec


@dataclass(frozen=True, slots=True)
class Redundancy:
    usable: tuple[str, ...]  # could carry the class now
    standby: tuple[str, ...]  # cold, known good: could be made usable within their activation time
    unproven: tuple[str, ...]  # cold, but failed, down, or not verified recently enough
    unknown: tuple[str, ...] = ()  # hot uplinks with no evidence yet: no verdict until they have some

    @property
    def judged(self) -> bool:
        return not self.unknown

    @property
    def exposed(self) -> bool:
        """One usable uplink or none is left."""
        return self.judged and len(self.usable) <= 1

    def describe(self) -> str:
        def names(xs: tuple[str, ...]) -> str:
            return f" ({', '.join(xs)})" if xs else ""

        text = f"{len(self.usable)} usable{names(self.usable)}, {len(self.standby)} standby{names(self.standby)}"
        if self.unproven:
            text += f", {len(self.unproven)} unproven{names(self.unproven)}"
        if self.unknown:
            text += f", {len(self.unknown)} not yet judged{names(self.unknown)}"
        return text

    def as_dict(self) -> dict[str, object]:
        return {
            "usable": len(self.usable),
            "standby": len(self.standby),
            "usable_uplinks": list(self.usable),
            "standby_uplinks": list(self.standby),
            "unproven_uplinks": list(self.unproven),
            "judged": self.judged,
        }


def last_verified(u: UplinkState, now: float) -> float | None:
    """When the uplink was last seen working: now while it is UP, else the last move into or out of UP."""
    if u.lifecycle is Lifecycle.ACTIVE and u.health is Health.UP:
        return now
    return u.verified_at


def verify_deadline(spec: UplinkSpec, u: UplinkState, now: float) -> float | None:
    """When the proof goes stale (verify.within after the last one, or after watching began if none)."""
    if spec.verify is None:
        return None
    if u.lifecycle is Lifecycle.ACTIVE and u.health is Health.UP:
        return None  # verified continuously
    return (u.verified_at if u.verified_at is not None else u.tracked_since) + spec.verify.within


def known_good(spec: UplinkSpec, u: UplinkState, now: float) -> bool:
    """A cold uplink that may be counted on: not failed or down, and verified recently enough."""
    if u.lifecycle is Lifecycle.FAILED or (u.lifecycle is Lifecycle.ACTIVE and u.health is Health.DOWN):
        return False
    last = last_verified(u, now)
    if last is None:
        return False
    return spec.verify is None or now - last < spec.verify.within  # as verify_deadline: stale from then on


def readiness_key(state: EngineState) -> tuple[object, ...]:
    """Everything redundancy reads, but the clock: equal keys give equal redundancy for every class
    (verify.within enters through the `verify_stale` flag, set before redundancy is read)."""
    return (
        tuple(
            (u.health, u.lifecycle, u.suppressed, u.carrier, u.verify_stale, u.verified_at is None)
            for u in state.uplinks.values()
        ),
        state.overrides,
    )


def redundancy(spec: ClassSpec, policy: Policy, state: EngineState) -> Redundancy:
    usable_: list[str] = []
    standby: list[str] = []
    unproven: list[str] = []
    unknown: list[str] = []
    for name in spec.path:
        up = policy.uplinks.get(name)
        u = state.uplinks.get(name)
        if up is None or u is None or not up.admits(spec.name) or drained(state, name):
            continue
        if usable(state, name):
            usable_.append(name)
        elif up.standby.cold:
            (standby if known_good(up, u, state.now) else unproven).append(name)
        elif u.unjudged:
            unknown.append(name)
    return Redundancy(tuple(usable_), tuple(standby), tuple(unproven), tuple(unknown))


def prewarms(policy: Policy) -> bool:
    """Whether anything in the policy pre-warms (a class or an uplink asks for it)."""
    return any(c.redundancy.prewarm for c in policy.classes.values()) or any(
        u.standby.cold and u.standby.prewarm for u in policy.uplinks.values()
    )


def prewarm_targets(spec: ClassSpec, policy: Policy, state: EngineState, r: Redundancy) -> tuple[str, ...]:
    """The cold uplinks to warm for a class down to one usable hot uplink: the first cold one of its path
    if the class pre-warms, and every cold one of its path that pre-warms itself."""
    if not r.judged:
        return ()
    hot = [n for n in r.usable if not policy.uplinks[n].standby.cold]
    if len(hot) > 1:
        return ()
    out: list[str] = []
    first = spec.redundancy.prewarm
    for name in spec.path:
        up = policy.uplinks.get(name)
        if up is None or not up.standby.cold or not up.admits(spec.name) or drained(state, name):
            continue
        if first or up.standby.prewarm:
            out.append(name)
        first = False
    return tuple(out)
