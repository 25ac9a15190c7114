"""Backup drills: when one is due, whether it is safe, its checks and verdict; a state machine as data, pure."""

# Theory of operation
# -------------------
# A drill proves a backup uplink before it is needed: a cold one is activated exactly as the standby
# planner would (the same ActivateStandby effect, the same activation deadline), then the drill counts
# the uplink's own probe rounds through it, and finally lets go of what it switched on. One drill at a
# time per gateway, and only while nothing needs the backup:
#
#   IDLE --start--> ACTIVATING --passes traffic--> CHECKING --enough rounds--> IDLE (pass or fail)
#   IDLE --start (hot, or a cold uplink already up)-------> CHECKING
#   ACTIVATING --activation failed or timed out--> IDLE (fail)
#   ACTIVATING, CHECKING --hazard, budget, time, reload--> IDLE (aborted, or fail on time)
#   ACTIVATING, CHECKING --a class needs the uplink--> IDLE (production)
#
# Safety. A drill starts only when (`hazard()` finds nothing): every other uplink in service is UP (not
# degraded, damped, without carrier or without evidence), every class whose path holds the drilled
# uplink (and that it admits) is routed via the first uplink of its path, no class uses or needs the
# drilled uplink, and no override names it. The same test runs at every step of a running drill: when
# it finds a hazard the drill is aborted at once and, if the drill switched a cold uplink on, it is
# switched off again in the same step.
#
# Production wins. If a class needs the drilled uplink (its path reached it, or an operator forced a
# class onto it), the drill is over: it ends with the verdict "production" and hands the uplink to the
# cold-standby lifecycle as it stands (ACTIVATING or ACTIVE), without deactivating it: switching off a
# link that 112 is about to use would be the one thing a drill must never do, and a satellite terminal
# the drill already woke saves the class most of its activation time. This test comes before the
# hazard test, because the event that makes a class need the backup (the last terrestrial uplink
# failing) is also a hazard. From then on the standby planner owns the link (release_after applies).
#
# The price of "abort at once": when the primary fails mid-drill and the remaining uplinks fail a
# moment later (a fiber cut, then a regional mobile outage judged one probe round after), the abort
# has already switched the backup off and the class that then needs it waits a whole activation
# again. Decided: an abort still switches off what the drill switched on, and keeps nothing warm.
# "About to be needed" is what pre-warm already says, in policy terms: a class with
# `redundancy.prewarm` (or served by a backup with `standby.prewarm`) that is down to its last usable
# hot uplink wants the backup, so the failure that brings it there is production (above), not a
# hazard, and the drill hands the link over warm. What aborts is a failure that leaves every class a
# second hot uplink, or one in a class that does not pre-warm: that policy accepts an activation as
# the cost of losing the last uplink, and keeping the link warm on every abort (a primary that merely
# degrades is the common one) would leave a metered link up for release_after after most aborts to
# save it. A drill that passes and lets go a moment before a loss is judged pays the same price once:
# the engine cannot see the loss before its probes do, and pre-warm starts a new activation in the
# step that judges it, as for a link never drilled. tests/test_drill_prewarm.py shows both sides
# (with pre-warm: production, the class waits only for detection; without: the abort costs the
# activation); tests/test_drill_properties.py that an abort always deactivates.
#
# A drill never moves a class: it changes no path and installs no route. The drilled uplink becomes
# usable, but every class touching it sits on an earlier uplink of its path, so none chooses it unless
# that earlier uplink fails, which is production (above). A drill never flushes conntrack, as it moves
# nothing.
#
# The canary. A drill may name an end-to-end test flow (`canary:`): probes to a service production
# uses (the dispatch centre's), marked into a drill-only class with a fwmark and table of their own
# (no user class, so no production flow can ever match it). Its table is routed via the drilled uplink
# exactly while the drill is CHECKING and is unreachable otherwise (`canary_routes`, a RouteCanary
# effect at each change); the shell sends the canary probes with that mark, so they cross the real
# policy routing and NAT as a class's traffic would, not the uplink's own table as its probes do. Their
# results come back as probe results of the drilled uplink under the canary's key: they never count
# for the uplink's health, only for the drill, which then waits for the canary's rounds too and fails
# when the canary loses more than its max_loss_percent (the cause names the target). The canary moves
# no production class: it adds a table and a rule no class uses, and changes no class's route.
#
# Time. Interval drills (`every`) run on the monotonic clock: first at the policy's offset after the
# first start, then every interval; a restart keeps the due time and the last result (state.py:
# restored_state, from the state dir's drills.json), and ends a drill it cut short as aborted.
# Window drills run in a weekly window on the wall clock, which the engine never reads: the shell
# converts the next opening to monotonic time and sends it as a DrillWindow event, and the engine
# starts the drill at the opening plus the offset, only while the clock is trusted (SANE or
# HOLDOVER); otherwise it is postponed. The offset (within
# `jitter`) is data compiled into the policy from the site's name, not a random number drawn here.
#
# Budgets. A drill ends at `max_duration` (a fail: the uplink did not prove itself in time) and when its
# own probe traffic reaches `max_bytes` (aborted: the budget, not the uplink, was too small). The bytes
# are an estimate of failoverd's probe packets through the uplink, IP headers included: the link's own
# signalling (a satellite terminal's, a modem's attach) is not seen from here.

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Protocol

from failoverd.engine.drillstate import (
    DRILL_TRANSITIONS,
    Check,
    DrillPhase,
    DrillResult,
    DrillRun,
    DrillSchedule,
)
from failoverd.engine.effects import (
    Cause,
    CommandReply,
    DrillChanged,
    DrillCheck,
    DrillPostponed,
    DrillVerdict,
    Effect,
    RouteCanary,
    Severity,
)
from failoverd.engine.events import ClockState, DrillWindow, ProbeResult, RunDrill
from failoverd.engine.state import ClassState, ClockView, Health, Lifecycle, Override, UplinkState, mark_verified
from failoverd.errors import EngineBug
from failoverd.policy.model import CanarySpec, DrillSpec, Policy, ProbeKind

# Estimated bytes on the wire per probe and answer (IPv4 and transport headers, the payload failoverd
# sends): what a drill's probes cost on a metered link.
PROBE_BYTES: Mapping[ProbeKind, int] = {
    "icmp": 2 * 84,
    "udp-echo": 2 * 92,
    "dns": 2 * 120,
    "tcp": 6 * 60,  # handshake and close
    "http": 6 * 60 + 1500,
    "arp-nexthop": 2 * 42,
    "ndp-nexthop": 2 * 86,  # Ethernet, IPv6, solicitation or advertisement with a link-layer address
}
TRUSTED_CLOCK = frozenset({ClockState.SANE, ClockState.HOLDOVER})


class Desk(Protocol):
    """What a drill may touch in a step: step.py's scratch pad provides it."""

    policy: Policy
    now: float
    uplinks: dict[str, UplinkState]
    classes: dict[str, ClassState]
    overrides: list[Override]
    clock: ClockView
    effects: list[Effect]
    drill: DrillRun | None
    drill_schedules: dict[str, DrillSchedule]
    needed: set[str]
    reply: CommandReply | None

    def activate_standby(self, name: str, cause: Cause) -> None: ...

    def release_standby(self, name: str, cause: Cause) -> None: ...

    def raise_alarm(self, kind: str, subject: str, severity: Severity, cause: Cause) -> None: ...

    def clear_alarm(self, kind: str, subject: str, cause: Cause) -> None: ...

    def notice(self, severity: Severity, subject: str, cause: Cause) -> None: ...


def _move(w: Desk, run: DrillRun, new: DrillPhase, cause: Cause) -> DrillRun:
    if new not in DRILL_TRANSITIONS[run.phase]:
        raise EngineBug(f"illegal drill transition {run.phase.value} -> {new.value} on {run.uplink} ({cause})")
    w.effects.append(DrillChanged(run.uplink, run.phase.value, new.value, cause))
    canary = _canary(w.policy, run.uplink)
    if new is DrillPhase.CHECKING and canary is not None:
        w.effects.append(RouteCanary(run.uplink, run.uplink, Cause("drill-canary", _canary_text(canary, run.uplink))))
    return replace(run, phase=new)


def _canary(policy: Policy, uplink: str) -> CanarySpec | None:
    spec = policy.drills.get(uplink)
    return spec.canary if spec is not None else None


def _canary_text(c: CanarySpec, uplink: str) -> str:
    port = f" port {c.probe.port}" if c.probe.port is not None else ""
    return f"canary {c.probe.kind} to {c.probe.target}{port} via {uplink} (table {c.table}, mark {c.fwmark:#x})"


def canary_routes(policy: Policy, drill: DrillRun | None) -> dict[str, str | None]:
    """Each canary's table, by drilled uplink: via that uplink while its drill is CHECKING, else None
    (unreachable). What the kernel plan installs; read from the state, so a restart or reload agrees."""
    return {
        name: name if drill is not None and drill.uplink == name and drill.phase is DrillPhase.CHECKING else None
        for name, spec in policy.drills.items()
        if spec.canary is not None
    }


# -- safety ------------------------------------------------------------------------------------------


def _primary(policy: Policy, cls: str) -> str | None:
    spec = policy.classes[cls]
    return next((n for n in spec.path if n in policy.uplinks and policy.uplinks[n].admits(cls)), None)


def production_use(w: Desk, uplink: str) -> str | None:
    """Why production needs the uplink now (then it is no drill any more), or None."""
    for name, c in w.classes.items():
        if c.route == "via" and c.uplink == uplink:
            return f"class {name} is routed via {uplink}"
    if uplink in w.needed:
        return f"a class needs {uplink}"
    for o in w.overrides:
        if o.kind == "force" and o.uplink == uplink:
            return f"override {o.id} puts class {o.cls} on {uplink}"
    return None


def hazard(w: Desk, uplink: str) -> str | None:
    """Why drilling `uplink` now could endanger traffic, or None when it is safe."""
    pol = w.policy
    for o in w.overrides:
        if o.kind == "drain" and o.uplink == uplink:
            return f"{uplink} is drained by override {o.id}"
    for name, u in w.uplinks.items():
        if name == uplink or name not in pol.uplinks:
            continue
        if pol.uplinks[name].standby.cold and u.lifecycle is not Lifecycle.ACTIVE:
            continue  # off: no traffic of any class on it
        if u.health is not Health.UP or u.suppressed or not u.carrier:
            state = "damped" if u.suppressed else "without carrier" if not u.carrier else u.status
            return f"uplink {name} is {state}"
    for name, spec in pol.classes.items():
        if uplink not in spec.path or not pol.uplinks[uplink].admits(name):
            continue
        c = w.classes.get(name)
        primary = _primary(pol, name)
        if c is None or c.route != "via" or c.uplink is None:
            return f"class {name} has no route ({c.route if c else 'unknown'})"
        if c.uplink != primary:
            return f"class {name} is on {c.uplink}, not on its primary {primary}"
    return None


def clock_trusted(clock: ClockView) -> bool:
    return clock.state in TRUSTED_CLOCK


# -- events ------------------------------------------------------------------------------------------


def window(w: Desk, ev: DrillWindow) -> None:
    """The shell's conversion of the next window opening; one opening is drilled once."""
    spec = w.policy.drills.get(ev.uplink)
    if spec is None or spec.window is None:
        return
    sch = w.drill_schedules.get(ev.uplink, DrillSchedule())
    if sch.window == ev.wall_opens:
        # The same opening, converted again (the shell repeats itself): only the monotonic times may
        # have moved, as after a clock step.
        if not sch.window_done and sch.postponed is None:
            sch = replace(sch, due_at=ev.opens + spec.offset, closes=ev.closes)
        w.drill_schedules[ev.uplink] = replace(sch, closes=ev.closes)
        return
    w.drill_schedules[ev.uplink] = replace(
        sch, due_at=ev.opens + spec.offset, closes=ev.closes, window=ev.wall_opens, window_done=False, postponed=None
    )


def run_now(w: Desk, ev: RunDrill) -> None:
    """`failoverctl drill run UPLINK`."""
    pol = w.policy
    if ev.uplink not in pol.uplinks:
        w.reply = CommandReply(ev.request, False, f'unknown uplink "{ev.uplink}" (uplinks: {", ".join(pol.uplinks)})')
        return
    if ev.uplink not in pol.drills:
        drilled = ", ".join(pol.drills) or "none"
        w.reply = CommandReply(
            ev.request, False, f'no drill is defined for "{ev.uplink}" in the policy (drills: {drilled})'
        )
        return
    if w.drill is not None:
        run = w.drill
        w.reply = CommandReply(ev.request, False, f"refused: the drill of {run.uplink} is running ({run.phase.value})")
        return
    why = production_use(w, ev.uplink) or hazard(w, ev.uplink)
    if why is not None:
        w.reply = CommandReply(ev.request, False, f"refused: not safe to drill {ev.uplink}: {why}")
        return
    _start(w, ev.uplink, ev.by, Cause("drill-requested", f"drill of {ev.uplink} asked by {ev.by}"))
    phase = w.drill.phase.value if w.drill is not None else "?"
    w.reply = CommandReply(ev.request, True, f"drill of {ev.uplink} started ({phase})")


def fold_probes(w: Desk, results: Iterable[ProbeResult]) -> None:
    """Count the drilled uplink's probe results: rounds, loss, RTT, and the bytes they cost."""
    run = w.drill
    if run is None:
        return
    spec = w.policy.uplinks.get(run.uplink)
    u = w.uplinks.get(run.uplink)
    if spec is None or u is None:
        return
    kinds = {p.key: p.kind for p in spec.probes}
    timeouts = {p.key: p.timeout for p in spec.probes}
    counted = dict(run.results)
    lost, rtt_sum, rtt_count, spent, first = run.lost, run.rtt_sum, run.rtt_count, run.bytes, run.first_answer
    canary = _canary(w.policy, run.uplink)
    c_done, c_lost, c_rtt_sum, c_rtt_count = (
        run.canary_results,
        run.canary_lost,
        run.canary_rtt_sum,
        run.canary_rtt_count,
    )
    for r in results:
        if canary is not None and r.probe == canary.key and r.uplink == run.uplink:
            if run.phase is not DrillPhase.CHECKING:
                continue  # late: its table was unreachable, the probe never left
            at = w.now if r.at is None else min(r.at, w.now)
            spent += PROBE_BYTES[canary.probe.kind]
            if not r.ok and run.active_at is not None and at < run.active_at + canary.probe.timeout:
                continue  # perhaps sent before the kernel had the canary's route: not the path's fault
            c_done += 1
            if r.ok:
                if r.rtt is not None:
                    c_rtt_sum += r.rtt
                    c_rtt_count += 1
            else:
                c_lost += 1
            continue
        if r.uplink != run.uplink or r.probe not in kinds:
            continue
        if u.lifecycle is Lifecycle.ACTIVATING and not u.activated:
            continue  # as the engine: losses while the link comes up say nothing
        spent += PROBE_BYTES[kinds[r.probe]]
        if r.ok and first is None:
            first = w.now if r.at is None else min(r.at, w.now)
        if run.phase is not DrillPhase.CHECKING:
            continue
        at = w.now if r.at is None else min(r.at, w.now)
        if not r.ok and run.active_at is not None and at < run.active_at + timeouts[r.probe]:
            continue  # lost, but perhaps sent before the link passed traffic: not the link's fault
        counted[r.probe] = counted.get(r.probe, 0) + 1
        if r.ok:
            if r.rtt is not None:
                rtt_sum += r.rtt
                rtt_count += 1
        else:
            lost += 1
    w.drill = replace(
        run,
        results=counted,
        lost=lost,
        rtt_sum=rtt_sum,
        rtt_count=rtt_count,
        bytes=spent,
        first_answer=first,
        canary_results=c_done,
        canary_lost=c_lost,
        canary_rtt_sum=c_rtt_sum,
        canary_rtt_count=c_rtt_count,
    )


# -- the step ----------------------------------------------------------------------------------------


def advance(w: Desk) -> None:
    """After the classes are assigned and standby planned: move the running drill on, or start a due one."""
    _prune(w)
    if w.drill is not None:
        _drive(w, w.drill)
    if w.drill is None:
        _start_due(w)


def _prune(w: Desk) -> None:
    for name in [n for n in w.drill_schedules if n not in w.policy.drills]:
        del w.drill_schedules[name]
    for name, spec in w.policy.drills.items():
        if name not in w.drill_schedules:
            due = w.now + spec.offset if spec.every is not None else None
            w.drill_schedules[name] = DrillSchedule(due_at=due)
    run = w.drill
    if run is not None and (run.uplink not in w.policy.drills or run.uplink not in w.uplinks):
        _end(w, run, "aborted", Cause("drill-reload", f"the policy no longer drills {run.uplink}"))


def _start_due(w: Desk) -> None:
    for name, spec in w.policy.drills.items():
        sch = w.drill_schedules[name]
        if sch.due_at is None or sch.due_at > w.now:
            continue
        if spec.window is not None:
            if sch.window_done or sch.closes is None:
                continue
            if w.now + spec.max_duration > sch.closes:
                _postpone(w, name, None, Cause("drill-window-closing", f"too little of the window left for {name}"))
                continue
            if not clock_trusted(w.clock):
                wait = f"the clock is {w.clock.state.value}: a window drill waits for a trusted clock"
                _postpone(w, name, w.now + spec.retry_after, Cause("drill-clock", wait))
                continue
        why = production_use(w, name) or hazard(w, name)
        if why is not None:
            _postpone(w, name, w.now + spec.retry_after, Cause("drill-unsafe", f"not safe to drill {name}: {why}"))
            continue
        _start(w, name, "schedule", Cause("drill-due", _due_text(spec)))
        return


def _due_text(spec: DrillSpec) -> str:
    if spec.window is not None:
        return f"window {spec.window.text} (UTC) open, offset {spec.offset:.0f}s"
    return f"due every {spec.every:g}s"


def _postpone(w: Desk, name: str, retry_at: float | None, cause: Cause) -> None:
    sch = w.drill_schedules[name]
    spec = w.policy.drills[name]
    if retry_at is not None and spec.window is not None and _past(retry_at, spec, sch):
        retry_at = None  # not in this window any more: the next one
    w.drill_schedules[name] = replace(sch, due_at=retry_at, postponed=cause.text)
    w.effects.append(DrillPostponed(name, retry_at, cause))


def _past(t: float, spec: DrillSpec, sch: DrillSchedule) -> bool:
    """A drill starting at `t` would not end before its window closes."""
    return sch.closes is not None and t + spec.max_duration > sch.closes


def _start(w: Desk, name: str, by: str, cause: Cause) -> None:
    spec = w.policy.uplinks[name]
    u = w.uplinks[name]
    run = DrillRun(name, DrillPhase.IDLE, w.now, by, activated=False, verified_before=u.verified_at)
    sch = w.drill_schedules.get(name, DrillSchedule())
    w.drill_schedules[name] = replace(sch, postponed=None)
    if spec.standby.cold and u.lifecycle in (Lifecycle.STANDBY, Lifecycle.FAILED):
        w.drill = _move(w, replace(run, activated=True, activating_since=w.now), DrillPhase.ACTIVATING, cause)
        w.activate_standby(name, Cause("drill-activate", f"drill: activating {name}"))
        return
    if spec.standby.cold and u.lifecycle is Lifecycle.ACTIVATING:
        # Already coming up (for a class that since let go): wait for it like a drill's own activation,
        # timed from when it entered ACTIVATING (its health stays UNKNOWN there, so `since` is that).
        w.drill = _move(w, replace(run, activating_since=u.since), DrillPhase.ACTIVATING, cause)
        return
    w.drill = _move(w, replace(run, active_at=w.now), DrillPhase.CHECKING, cause)


def _drive(w: Desk, run: DrillRun) -> None:
    name = run.uplink
    spec = w.policy.drills[name]
    up = w.policy.uplinks[name]
    u = w.uplinks[name]
    use = production_use(w, name)
    if use is not None:
        _end(w, run, "production", Cause("drill-production", f"{use}: the drill hands {name} over to production"))
        return
    why = hazard(w, name)
    if why is not None:
        _end(w, run, "aborted", Cause("drill-abort", f"{why}: drill of {name} aborted"))
        return
    if spec.max_bytes is not None and run.bytes >= spec.max_bytes:
        text = f"probe traffic reached max_bytes ({run.bytes} >= {spec.max_bytes}) before the checks were done"
        _end(w, run, "aborted", Cause("drill-budget", text, (("bytes", str(run.bytes)),)))
        return
    if w.now - run.started >= spec.max_duration:
        done = min(run.results.values(), default=0)
        text = f"not proven within max_duration {spec.max_duration:g}s ({done} of {spec.rounds} rounds"
        if spec.canary is not None:
            text += f"; canary to {spec.canary.probe.target}: {run.canary_results} of {spec.canary.rounds}"
        text += ")"
        _end(w, run, "fail", Cause("drill-timeout", text))
        return
    if run.phase is DrillPhase.ACTIVATING:
        # The activation is timed on the uplink's lifecycle, from entering ACTIVATING to ACTIVE (or
        # FAILED), not from the drill's start: a drill that found the uplink already coming up would
        # otherwise be credited with the time it did not watch. The limit is the lifecycle's own
        # activation deadline (activation_time after entering ACTIVATING, step.py update_uplinks),
        # which turns a slower uplink FAILED (activate-timeout) in the very step the time runs out;
        # there is no grace after it. So an uplink seen ACTIVE always came up in time, and the check
        # cannot fail there: comparing its time with activation_time again was dead code. A slow
        # activation fails the check in the FAILED branch, with the time it was given.
        since = run.activating_since if run.activating_since is not None else run.started
        if u.lifecycle is Lifecycle.FAILED:
            run = _check(w, run, Check("activation", u.since - since, "s", False), u.cause)
            _end(w, run, "fail", Cause("drill-activation-failed", f"{name} did not come up: {u.cause.text}"))
            return
        if u.lifecycle is Lifecycle.ACTIVE:
            # Drills advance in every step, after the uplinks are judged: this is the step it turned ACTIVE.
            took = u.since - since
            limit = up.standby.activation_time
            run = _check(
                w,
                run,
                Check("activation", took, "s", True),
                Cause("drill-activation", f"{took:.1f}s (limit {limit:g}s)"),
            )
            if run.first_answer is not None:
                first = run.first_answer - since
                run = _check(
                    w, run, Check("first-answer", first, "s", True), Cause("drill-first-answer", f"{first:.1f}s")
                )
            run = _move(
                w, replace(run, active_at=w.now), DrillPhase.CHECKING, Cause("drill-up", f"{name} passes traffic")
            )
            w.drill = run
        return
    # CHECKING
    if u.lifecycle is not Lifecycle.ACTIVE or u.health is Health.DOWN:
        cause = Cause("drill-probes-failed", f"{name} is {u.status} after activation: {u.cause.text}")
        run = _check(w, run, Check("rounds", float(min(run.results.values(), default=0)), "", False), cause)
        _end(w, run, "fail", cause)
        return
    keys = [p.key for p in up.probes]
    if any(run.results.get(k, 0) < spec.rounds for k in keys):
        return
    if spec.canary is not None and run.canary_results < spec.canary.rounds:
        return
    total = sum(run.results.get(k, 0) for k in keys)
    loss = 100.0 * run.lost / total if total else 100.0
    rtt = run.rtt_sum / run.rtt_count * 1000 if run.rtt_count else None
    run = _check(w, run, Check("rounds", float(spec.rounds), "", True), Cause("drill-rounds", f"{spec.rounds} rounds"))
    if run.first_answer is not None and not any(c.name == "first-answer" for c in run.checks):
        first = run.first_answer - run.started
        run = _check(w, run, Check("first-answer", first, "s", True), Cause("drill-first-answer", f"{first:.1f}s"))
    if rtt is not None:
        run = _check(w, run, Check("rtt", rtt, "ms", True), Cause("drill-rtt", f"{rtt:.1f}ms average"))
    loss_ok = loss <= spec.max_loss_percent
    run = _check(
        w,
        run,
        Check("loss", loss, "%", loss_ok),
        Cause("drill-loss", f"{loss:.1f}% (limit {spec.max_loss_percent:g}%)"),
    )
    canary_fail: Cause | None = None
    if spec.canary is not None:
        run, canary_fail = _canary_check(w, run, spec.canary)
    if not loss_ok:
        _end(w, run, "fail", Cause("drill-loss", f"{name} lost {loss:.1f}% of its probes"))
    elif canary_fail is not None:
        _end(w, run, "fail", canary_fail)
    else:
        text = f"{name} came up and carried {total} probes ({loss:.1f}% loss)"
        if spec.canary is not None:
            text += f"; its canary reached {spec.canary.probe.target}"
        _end(w, run, "pass", Cause("drill-pass", text))


def _canary_check(w: Desk, run: DrillRun, c: CanarySpec) -> tuple[DrillRun, Cause | None]:
    """The canary's check: loss (its value) and RTT through the backup; the cause of the fail, if it failed."""
    done = run.canary_results
    loss = 100.0 * run.canary_lost / done if done else 100.0
    rtt = run.canary_rtt_sum / run.canary_rtt_count * 1000 if run.canary_rtt_count else None
    ok = loss <= c.max_loss_percent
    port = f":{c.probe.port}" if c.probe.port is not None else ""
    where = f"{c.probe.kind} {c.probe.target}{port} via {run.uplink}"
    rtt_text = f", rtt {rtt:.1f}ms average" if rtt is not None else ", no answer"
    evidence = (
        ("target", f"{c.probe.target}{port}"),
        ("kind", c.probe.kind),
        ("probes", str(done)),
        ("loss_percent", f"{loss:.1f}"),
        ("rtt_ms", "-" if rtt is None else f"{rtt:.1f}"),
    )
    text = f"{where}: {loss:.1f}% of {done} lost (limit {c.max_loss_percent:g}%){rtt_text}"
    run = _check(w, run, Check("canary", loss, "%", ok), Cause("drill-canary", text, evidence))
    if ok:
        return run, None
    fail = f"the canary to {c.probe.target}{port} lost {loss:.1f}% of {done} probes through {run.uplink}{rtt_text}"
    return run, Cause("drill-canary-failed", fail, evidence)


def _check(w: Desk, run: DrillRun, check: Check, cause: Cause) -> DrillRun:
    w.effects.append(DrillCheck(run.uplink, check.name, check.value, check.unit, check.ok, cause))
    return replace(run, checks=(*run.checks, check))


def _end(w: Desk, run: DrillRun, verdict: DrillVerdict, cause: Cause) -> None:
    if DrillPhase.IDLE not in DRILL_TRANSITIONS[run.phase]:
        raise EngineBug(f"illegal drill transition {run.phase.value} -> idle on {run.uplink} ({cause})")
    name = run.uplink
    spec = w.policy.drills.get(name)
    u = w.uplinks.get(name)
    # Production keeps what it found; any other end switches off what the drill switched on.
    deactivate = verdict != "production" and run.activated and u is not None and u.lifecycle is not Lifecycle.STANDBY
    w.effects.append(DrillChanged(name, run.phase.value, DrillPhase.IDLE.value, cause, verdict, deactivate))
    if run.phase is DrillPhase.CHECKING and spec is not None and spec.canary is not None:
        w.effects.append(RouteCanary(name, None, Cause("drill-canary-off", f"drill of {name} over ({verdict})")))
    if deactivate:
        w.release_standby(name, Cause("drill-release", f"drill of {name} over ({verdict})"))
    w.drill = None
    sch = w.drill_schedules.get(name, DrillSchedule())
    alarmed = sch.alarmed
    if verdict == "fail" and spec is not None:
        w.raise_alarm(
            "drill-failed", name, spec.severity, Cause("drill-failed", f"backup {name} failed its drill: {cause.text}")
        )
        alarmed = True
    elif verdict == "pass":
        w.clear_alarm("drill-failed", name, Cause("drill-passed", f"backup {name} passed its drill: {cause.text}"))
        alarmed = False
    if verdict == "aborted" and cause.code == "drill-budget":
        w.notice("warning", name, cause)
    result = DrillResult(verdict, w.now, cause, run.checks)
    verified = w.now if verdict == "pass" else sch.verified_at
    if verdict == "pass" and name in w.uplinks:
        # The uplink's own proof of working (redundancy: standby known good, verify.within).
        w.uplinks[name] = mark_verified(w.uplinks[name], w.now)
    elif verdict in {"fail", "aborted"} and name in w.uplinks:
        # Coming UP for a drill that then failed (or was cut short) proves nothing: the health moves
        # refreshed verified_at on the way, so it goes back to what it was before the drill.
        w.uplinks[name] = replace(w.uplinks[name], verified_at=run.verified_before)
    if spec is None:
        return
    if verdict in {"aborted", "production"}:
        retry: float | None = w.now + spec.retry_after
        if retry is not None and spec.window is not None and _past(retry, spec, sch):
            retry = None
        w.drill_schedules[name] = replace(sch, due_at=retry, last=result, verified_at=verified, alarmed=alarmed)
        return
    due = w.now + spec.every if spec.every is not None else None
    w.drill_schedules[name] = replace(
        sch,
        due_at=due,
        last=result,
        verified_at=verified,
        window_done=spec.window is not None,
        postponed=None,
        alarmed=alarmed,
    )


def wake_times(drill: DrillRun | None, schedules: Mapping[str, DrillSchedule], policy: Policy) -> list[float]:
    """When a Tick may next move a drill: one due, or the running one's max_duration."""
    times = [s.due_at for s in schedules.values() if s.due_at is not None]
    if drill is not None and drill.uplink in policy.drills:
        times.append(drill.started + policy.drills[drill.uplink].max_duration)
    return times
