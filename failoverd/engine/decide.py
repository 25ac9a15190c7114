"""Classes → uplinks: walk each class's path, honour overrides, metering, preemption and cold standby."""

# Theory of operation
# -------------------
# For every class the engine first finds the *candidate*: the first uplink in the class's path that admits
# the class, is not drained, and is usable (UP, or DEGRADED when the class does not avoid degraded links
# or nothing better exists). A hot uplink still UNKNOWN stops the walk: failoverd never moves a class to a
# backup merely because the primary has not been probed yet. Cold uplinks met on the way that are not yet
# up are *needed*: the standby planner activates them.
#
# The candidate then meets the class's current uplink:
# - nothing assigned yet, the current uplink is unusable, not admitted, drained or gone → move now (failover);
# - the candidate is later in the path than a usable current uplink → the current one is degraded and
#   avoided, or left by an override: move now;
# - the candidate is earlier in the path (failback) → only if the class is revertive and the candidate has
#   been usable for `preempt_delay` seconds; an override that ended moves the class back at once.
# An operator's force override wins while its uplink is usable, or always when it was forced explicitly.
# A metered uplink never carries a class it does not admit, override or not.

from __future__ import annotations

from dataclasses import dataclass, field, replace

from failoverd.engine.effects import Cause, Route
from failoverd.engine.events import ClockState
from failoverd.engine.state import USABLE, ClassState, EngineState, Health, Lifecycle, Override
from failoverd.policy.model import ClassSpec, Policy


@dataclass(frozen=True, slots=True)
class Choice:
    uplink: str | None
    route: Route
    cause: Cause
    override: str | None = None
    needs: frozenset[str] = field(default_factory=frozenset)  # cold uplinks this class wants activated
    pending: bool = False  # not enough evidence to decide: keep what is there


def usable(state: EngineState, name: str) -> bool:
    u = state.uplinks.get(name)
    return u is not None and u.health in USABLE and not u.suppressed and u.carrier


def time_suspect(policy: Policy, state: EngineState, name: str) -> bool:
    """The clock policy says to avoid uplinks over which only falsetickers answer, and this is one."""
    reaction = {ClockState.SUSPECT: policy.clock.on_suspect, ClockState.INSANE: policy.clock.on_insane}.get(
        state.clock.state
    )
    return reaction is not None and reaction.avoid_uplinks and name in state.clock.disagreeing_uplinks


def known_bad(state: EngineState, name: str) -> bool:
    """Unusable on evidence; an uplink with no evidence yet (UNKNOWN, as after a restart) is not."""
    u = state.uplinks.get(name)
    if u is None or drained(state, name):
        return True
    return not u.unjudged and not usable(state, name)


def drained(state: EngineState, name: str) -> Override | None:
    return state.active_override("drain", name)


def why_unusable(state: EngineState, name: str) -> str:
    u = state.uplinks.get(name)
    if u is None:
        return f"{name} is not in the policy"
    if drained(state, name):
        return f"{name} is drained"
    if u.suppressed:
        return f"{name} is damped (flap penalty {u.penalty:.0f})"
    return f"{name} is {u.status} ({u.cause})"


def candidate(spec: ClassSpec, policy: Policy, state: EngineState) -> Choice:
    """The uplink the class should use now, ignoring how it got where it is."""
    needs: set[str] = set()
    skipped: list[str] = []
    degraded: str | None = None
    unknown: str | None = None
    for name in spec.path:
        up = policy.uplinks.get(name)
        u = state.uplinks.get(name)
        if up is None or u is None or not up.admits(spec.name):
            continue
        if drained(state, name):
            skipped.append(f"{name} drained")
            continue
        if u.unjudged and not up.standby.cold:
            unknown = unknown or name
            skipped.append(f"{name} unknown")
            continue
        if usable(state, name):
            if u.health is Health.DEGRADED and spec.avoid_degraded:
                degraded = degraded or name
                skipped.append(f"{name} degraded")
                continue
            if time_suspect(policy, state, name):
                # Used only if nothing better is usable, like a degraded uplink.
                degraded = degraded or name
                skipped.append(f"{name} time sources disagree")
                continue
            # Behind an uplink with no evidence yet, this is only a fallback: see choose().
            return Choice(
                name,
                "via",
                _path_cause(name, spec, skipped),
                needs=frozenset(needs),
                pending=unknown is not None,
            )
        if up.standby.cold and (u.lifecycle is not Lifecycle.ACTIVE or u.health is Health.UNKNOWN):
            if unknown is None:  # a better uplink with no evidence yet may make it unnecessary
                needs.add(name)
            skipped.append(f"{name} {u.status.lower()}")
            continue
        skipped.append(f"{name} {'damped' if u.suppressed else u.status.lower()}")
    if degraded is not None:
        return Choice(
            degraded,
            "via",
            Cause("degraded-best", f"{degraded} is degraded but nothing better is usable", _ev(skipped)),
            needs=frozenset(needs),
            pending=unknown is not None,
        )
    if unknown is not None:
        wait = Cause("pending", f"waiting for first evidence on {unknown}", _ev(skipped))
        return Choice(None, "pending", wait, needs=frozenset(needs), pending=True)
    text = "no uplink in the path is usable" + (f" ({', '.join(skipped)})" if skipped else "")
    if spec.when_all_down == "keep":
        keep = Cause("all-down-keep", text + "; keeping the last route", _ev(skipped))
        return Choice(None, "pending", keep, needs=frozenset(needs), pending=True)
    return Choice(None, spec.when_all_down, Cause("all-down", text, _ev(skipped)), needs=frozenset(needs))


def _ev(skipped: list[str]) -> tuple[tuple[str, str], ...]:
    return (("skipped", ", ".join(skipped)),) if skipped else ()


def _path_cause(name: str, spec: ClassSpec, skipped: list[str]) -> Cause:
    rank = spec.path.index(name) + 1
    text = f"{name} is the first usable uplink (#{rank} of {len(spec.path)} in the path)"
    if skipped:
        text += f"; skipped {', '.join(skipped)}"
    return Cause("path", text, _ev(skipped))


def _rank(spec: ClassSpec, uplink: str | None) -> int:
    if uplink is None or uplink not in spec.path:
        return len(spec.path)
    return spec.path.index(uplink)


def choose(spec: ClassSpec, policy: Policy, state: EngineState, now: float) -> tuple[Choice, float | None]:
    """Where the class goes now, and when a preempt timer would make it move if nothing else happens."""
    cur = state.classes.get(spec.name)
    forced = state.active_override("force", spec.name)
    admitted = forced is not None and policy.uplinks[forced.uplink].admits(spec.name)
    if forced is not None and admitted and (forced.force or usable(state, forced.uplink)):
        cause = Cause(
            "override",
            f"operator override {forced.id}: {forced.reason!r} by {forced.by}",
            (("override", forced.id),),
        )
        need = frozenset({forced.uplink}) if policy.uplinks[forced.uplink].standby.cold else frozenset()
        return Choice(forced.uplink, "via", cause, override=forced.id, needs=need), None
    if (
        forced is not None
        and admitted
        and cur is not None
        and (cur.route, cur.uplink) == ("via", forced.uplink)
        and state.uplinks[forced.uplink].unjudged
    ):
        # Restarted under an override, and the kernel still routes the class as the operator asked:
        # hold it there until that uplink has been judged, rather than bounce to the path and back.
        wait = Cause("pending", f"override {forced.id}: waiting for first evidence on {forced.uplink}")
        return Choice(forced.uplink, "pending", wait, override=forced.id, pending=True), None

    cand = candidate(spec, policy, state)
    if forced is not None and policy.uplinks[forced.uplink].standby.cold:
        cand = Choice(cand.uplink, cand.route, cand.cause, cand.override, cand.needs | {forced.uplink}, cand.pending)
    if forced is not None and not cand.pending:
        note = f"; override {forced.id} waits: {why_unusable(state, forced.uplink)}"
        cand = Choice(
            cand.uplink,
            cand.route,
            Cause(cand.cause.code, cand.cause.text + note, cand.cause.evidence),
            needs=cand.needs,
        )
    if cand.pending:
        # A more preferred uplink has no evidence yet. Wait for it, unless the class sits on nothing
        # usable and the walk found somewhere usable: then take that now.
        stranded = cur is not None and cur.route != "pending" and (cur.uplink is None or known_bad(state, cur.uplink))
        if stranded and cand.uplink is not None:
            return replace(cand, pending=False), None
        return replace(cand, pending=True), None
    if cur is None:
        return cand, None
    if cur.route != "via" or cur.uplink is None:
        return cand, None
    if cand.uplink == cur.uplink:
        return cand, None
    current_ok = (
        cur.uplink in policy.uplinks
        and policy.uplinks[cur.uplink].admits(spec.name)
        and usable(state, cur.uplink)
        and not drained(state, cur.uplink)
        and cur.uplink in spec.path
    )
    if not current_ok or cur.by_override is not None:
        return cand, None
    cu = state.uplinks[cur.uplink]
    if cand.uplink is None:
        return cand, None
    if _rank(spec, cand.uplink) > _rank(spec, cur.uplink):
        return cand, None  # current is avoided (degraded) in favour of a later uplink
    if (cu.health is Health.DEGRADED and spec.avoid_degraded) or time_suspect(policy, state, cur.uplink):
        return cand, None  # leaving a degraded (or time-suspect) uplink is a failover, not a failback
    # Failback to a more preferred uplink.
    if not spec.revertive:
        hold = Cause(
            "non-revertive",
            f"{cand.uplink} is usable again but the class is non-revertive; staying on {cur.uplink}",
        )
        return Choice(cur.uplink, "via", hold, needs=cand.needs), None
    cu_state = state.uplinks[cand.uplink]
    since = cu_state.up_since if spec.avoid_degraded else cu_state.usable_since
    ready_at = (since if since is not None else now) + spec.preempt_delay
    if now >= ready_at:
        return (
            Choice(
                cand.uplink,
                "via",
                Cause(
                    "preempt",
                    f"{cand.uplink} stable for {now - (since or now):.1f}s >= preempt delay {spec.preempt_delay:g}s",
                    (("preempt_delay", f"{spec.preempt_delay:g}s"),),
                ),
                needs=cand.needs,
            ),
            None,
        )
    wait = Cause("preempt-wait", f"{cand.uplink} usable; failback after preempt delay at t={ready_at:g}")
    return Choice(cur.uplink, "via", wait, needs=cand.needs), ready_at


def is_failback(spec: ClassSpec, old: ClassState, new_uplink: str | None) -> bool:
    return old.uplink is not None and new_uplink is not None and _rank(spec, new_uplink) < _rank(spec, old.uplink)
