"""The engine's one entry point: step(state, event, policy, now) -> (state, effects); pure, no I/O."""

# Theory of operation
# -------------------
# One step applies one event at monotonic time `now`, in this order of phases:
#
# 1. the event itself: fold probe results into their targets, note carrier, a standby action's outcome,
#    a clock verdict, a reloaded policy, or an operator command (which may add or remove an override);
# 2. overrides whose time ran out expire;
# 3. a modem's profile deadlines run out (profiles.py: a switch unanswered, searching too long);
#    uplinks are re-judged (health.py): activation deadlines, damping reuse, then the evidence; after
#    a probe event only the uplinks it concerns and those with a timer due;
#    then a registered modem passing no data fails its profile, and profile switches start (profiles.py);
# 4. every class is assigned its uplink (decide.py) from one snapshot of that state: switches,
#    conntrack flushes and alarms follow;
# 5. cold standby links are activated where a class needs them (or pre-warms them: redundancy.py) and
#    released when none has for a while; classes down to their last usable uplink, and uplinks whose
#    proof of working is too old, raise (and clear) their alarms; a backup drill moves on (drills.py),
#    and the first step after a start switches off the cold uplinks it found off (settle_restart);
# 6. uplink changes and the command's reply are added to the effects, the invariants are checked, and
#    the time of the next timer (`wake_at`) is computed so that the runtime sleeps until then.

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from functools import partial
from typing import assert_never

from failoverd.engine import drills as dr
from failoverd.engine import health as hl
from failoverd.engine import profiles as pf
from failoverd.engine.alarms import (
    SUBJECT_OF,
    ActiveAlarm,
    CarriedAlarm,
    alarm_id,
    first_notification,
    primary_uplink,
)
from failoverd.engine.decide import Choice, candidate, choose, is_failback, usable, why_unusable
from failoverd.engine.drillstate import DrillSchedule
from failoverd.engine.effects import (
    ActivateStandby,
    Alarm,
    Cause,
    ClockReaction,
    CommandReply,
    DeactivateStandby,
    DrillChanged,
    Effect,
    FlushConntrack,
    Severity,
    SwitchClass,
    UplinkChanged,
    WithdrawClass,
)
from failoverd.engine.events import (
    AckAlarm,
    CarrierBatch,
    CarrierChanged,
    ClockChanged,
    ClockState,
    DrainUplink,
    DrillWindow,
    Event,
    ForceClass,
    ModemState,
    PinProfile,
    PolicyReloaded,
    ProbeBatch,
    ProbeResult,
    ProfileSwitched,
    Release,
    RunDrill,
    ServiceAlarm,
    StandbyResult,
    Tick,
)
from failoverd.engine.modemstate import ModemView, Phase
from failoverd.engine.redundancy import (
    last_verified,
    prewarm_targets,
    prewarms,
    readiness_key,
    redundancy,
    verify_deadline,
)
from failoverd.engine.state import (
    USABLE,
    ClassState,
    ClockView,
    EngineState,
    Health,
    Lifecycle,
    Override,
    OverrideKind,
    Restart,
    UplinkState,
    initial_uplink,
    override_applies,
    switch,
)
from failoverd.errors import EngineBug
from failoverd.policy.model import Policy

DEFAULT_OVERRIDE_TTL = 3600.0


class _Work:
    """A step's scratch pad: mutable copies that become the next immutable state."""

    def __init__(self, state: EngineState, policy: Policy, now: float) -> None:
        self.before = state
        self.policy = policy
        self.now = now
        self.uplinks: dict[str, UplinkState] = dict(state.uplinks)
        self.classes: dict[str, ClassState] = dict(state.classes)
        self.overrides: list[Override] = list(state.overrides)
        self.clock = state.clock
        self.seq = state.override_seq
        self.effects: list[Effect] = []
        self.reply: CommandReply | None = None
        self.by = ""  # who sent the command being answered
        self.preempt_at: list[float] = []
        self.prewarm: dict[str, str] = dict(state.prewarm)
        self.reloaded = False
        self._key_before: tuple[object, ...] | None = None
        self.drill = state.drill
        self.drill_schedules: dict[str, DrillSchedule] = dict(state.drills)
        self.needed: set[str] = set()  # cold uplinks some class needs, or uses (plan_standby)
        self.alarms: dict[str, ActiveAlarm] = dict(state.alarms)
        self.alarms_changed = False  # raised, cleared or acknowledged in this step: notify_at may move
        self.notify_at = state.notify_at
        self.carried: dict[str, CarriedAlarm] = {k: c for k, c in state.carried.items() if c.until > now}
        # Per uplink with profiles; a new one (first step, reload) starts UNKNOWN on its first profile.
        self.modems: dict[str, ModemView] = {}
        for name, spec in policy.uplinks.items():
            if spec.modem is None:
                continue
            v = state.modems.get(name)
            if v is None or v.profile not in {p.name for p in spec.modem.profiles}:
                v = pf.initial(spec.modem, now)
            self.modems[name] = v

    def snapshot(self) -> EngineState:
        return EngineState(
            now=self.now,
            uplinks=dict(self.uplinks),
            classes=dict(self.classes),
            overrides=tuple(self.overrides),
            clock=self.clock,
            override_seq=self.seq,
            prewarm=dict(self.prewarm),
            drill=self.drill,
            drills=dict(self.drill_schedules),
            alarms=dict(self.alarms),
            carried=dict(self.carried),
            modems=dict(self.modems),
            notify_at=self.notify_at,
        )

    def readiness_moved(self, view: EngineState) -> bool:
        """Could any class's redundancy differ from the last step's? (Most probe rounds change nothing.)"""
        if self.reloaded:
            return True
        if self._key_before is None:
            self._key_before = readiness_key(self.before)
        return readiness_key(view) != self._key_before

    # -- events -----------------------------------------------------------------------------------
    def probes(self, results: Iterable[ProbeResult]) -> None:
        # Grouped per uplink and target in one pass; each result touches its own target only, and
        # the order is kept within a target.
        by_uplink: dict[str, dict[str, list[tuple[bool, float | None, float]]]] = {}
        now = self.now
        for r in results:
            at = now if r.at is None or r.at > now else r.at
            per_target = by_uplink.get(r.uplink)
            if per_target is None:
                per_target = by_uplink[r.uplink] = {}
            outcomes = per_target.get(r.probe)
            if outcomes is None:
                per_target[r.probe] = [(r.ok, r.rtt, at)]
            else:
                outcomes.append((r.ok, r.rtt, at))
        for name, folded in by_uplink.items():
            spec = self.policy.uplinks.get(name)
            u = self.uplinks.get(name)
            if spec is None or u is None or u.lifecycle in (Lifecycle.STANDBY, Lifecycle.FAILED):
                continue  # stale: the uplink left the policy or is switched off
            if u.lifecycle is Lifecycle.ACTIVATING and not u.activated:
                continue  # losses while the link is still coming up say nothing about it
            self.uplinks[name] = hl.record_probes(spec, u, self.now, folded)

    def carrier(self, ev: CarrierChanged) -> None:
        u = self.uplinks.get(ev.uplink)
        if u is not None:
            self.uplinks[ev.uplink] = replace(u, carrier=ev.up)

    def standby_result(self, ev: StandbyResult) -> None:
        u = self.uplinks.get(ev.uplink)
        if u is None:
            return
        if ev.action == "deactivate":
            if not ev.ok:
                self.notice("warning", ev.uplink, Cause("deactivate-failed", f"deactivation failed: {ev.detail}"))
            return
        if u.lifecycle is not Lifecycle.ACTIVATING:
            return  # a late answer to an activation that already timed out or was cancelled
        if ev.ok:
            self.uplinks[ev.uplink] = replace(u, activated=True)
        else:
            self.fail_activation(ev.uplink, u, Cause("activate-failed", f"activation failed: {ev.detail}"))

    def fail_activation(self, name: str, u: UplinkState, cause: Cause) -> None:
        spec = self.policy.uplinks[name]
        u = switch(u, Lifecycle.FAILED, self.now, cause)
        self.uplinks[name] = replace(
            u, activated=False, activation_deadline=None, retry_at=self.now + spec.standby.retry_after
        )
        if self.drill is None or self.drill.uplink != name:
            self.raise_alarm("standby-failed", name, "critical", cause)  # (a drill's failure: the drill's alarm)

    def clock_changed(self, ev: ClockChanged) -> None:
        old = self.clock.state
        self.clock = ClockView(
            ev.state,
            ev.bound,
            self.now if ev.state != old else self.clock.since,
            ev.evidence,
            ev.wall_time,
            frozenset(ev.disagreeing_uplinks),
        )
        if ev.state == old:
            return
        reaction = {
            ClockState.SUSPECT: self.policy.clock.on_suspect,
            ClockState.INSANE: self.policy.clock.on_insane,
        }.get(ev.state)
        bound = f" (error bound {ev.bound:g}s)" if ev.bound is not None else ""
        cause = Cause(
            f"clock-{ev.state.value}",
            f"clock {old.value} -> {ev.state.value}{bound}",
            tuple((f"evidence{i}", e) for i, e in enumerate(ev.evidence)),
        )
        self.effects.append(
            ClockReaction(old.value, ev.state.value, reaction.distrust if reaction else frozenset(), cause)
        )
        if reaction is not None and reaction.alarm:
            self.raise_alarm("clock", "clock", reaction.severity, cause)
        else:
            self.clear_alarm("clock", "clock", cause)

    def policy_reloaded(self) -> None:
        pol = self.policy
        self.reloaded = True
        for name in list(self.uplinks):
            if name not in pol.uplinks:
                del self.uplinks[name]
        for name, spec in pol.uplinks.items():
            u = self.uplinks.get(name)
            if u is None:
                self.uplinks[name] = initial_uplink(spec.standby.cold, self.now)
            elif not spec.standby.cold and u.lifecycle is Lifecycle.STANDBY:
                fresh = initial_uplink(False, self.now)
                self.uplinks[name] = replace(fresh, verified_at=u.verified_at, tracked_since=u.tracked_since)
            else:
                keys = {p.key for p in spec.probes}
                self.uplinks[name] = replace(u, targets={k: v for k, v in u.targets.items() if k in keys})
        for name in list(self.classes):
            if name not in pol.classes:
                del self.classes[name]
                self.effects.append(WithdrawClass(name, Cause("policy-reload", "class removed from the policy")))
        for name in pol.classes:
            self.classes.setdefault(name, ClassState(None, "pending", self.now, Cause("policy-reload", "new class")))
        for o in list(self.overrides):
            if not override_applies(o, pol):
                self.overrides.remove(o)
                self.notice("info", o.id, Cause("override-dropped", f"{o.describe()} names what the policy lost"))

    # -- modem profiles (engine/profiles.py) ------------------------------------------------------
    def modem_state(self, ev: ModemState) -> None:
        v = self.modems.get(ev.uplink)
        spec = self.policy.uplinks[ev.uplink].modem if ev.uplink in self.policy.uplinks else None
        if v is not None and spec is not None:
            self.modems[ev.uplink] = pf.observe(spec, v, ev, self.now, out=self.effects, pin=self.pin(ev.uplink))

    def profile_switched(self, ev: ProfileSwitched) -> None:
        v = self.modems.get(ev.uplink)
        if v is not None:
            self.modems[ev.uplink] = pf.switched(v, ev, self.now, out=self.effects)

    def modem_timers(self) -> None:
        for name, v in self.modems.items():
            spec = self.policy.uplinks[name].modem
            if spec is not None:  # always (self.modems holds only uplinks with a modem)
                self.modems[name] = pf.timers(name, spec, v, self.now, out=self.effects)
                self.hold_down_for_modem(name)

    def pin(self, uplink: str) -> Override | None:
        """The operator's pin of this uplink's profile, if one holds."""
        return next((o for o in self.overrides if o.kind == "profile" and o.uplink == uplink), None)

    def plan_profiles(self) -> None:
        """After the uplinks are judged: no data while registered fails a profile; then switch where due."""
        for name, seen in self.modems.items():
            spec = self.policy.uplinks[name].modem
            if spec is None:
                continue
            v = pf.judge_data(name, spec, seen, self.uplinks[name], self.now, out=self.effects)
            covered = partial(self.covered, name)
            self.modems[name] = pf.plan(name, spec, v, covered, self.now, out=self.effects, pin=self.pin(name))
            self.hold_down_for_modem(name)

    def hold_down_for_modem(self, name: str) -> None:
        """The uplink is DOWN while its profile fails or switches, judged at once: update_uplinks may
        skip it (a probe event re-judges only the probed uplinks) and the class assignment must see it."""
        u = self.uplinks[name]
        down = pf.down_cause(self.modems[name], self.pin(name))
        if down == u.modem_down:
            return
        u = hl.evaluate(self.policy.uplinks[name], replace(u, modem_down=down), self.now)
        if down is not None and u.health is Health.DOWN and u.since < self.now and u.cause != down:
            # Down since an earlier step (switching, say): the status shows what holds it down now,
            # such as a pinned profile that failed. (A move into DOWN in this step keeps the cause
            # that took it down: the history records that one.)
            u = replace(u, cause=down)
        self.uplinks[name] = u

    def covered(self, uplink: str) -> bool:
        """Every class that has `uplink` in its path (and may use it) is routed via another usable
        uplink (decide.usable, read from this step's uplinks without taking a snapshot)."""
        for c in self.policy.classes.values():
            if uplink not in c.path or not self.policy.uplinks[uplink].admits(c.name):
                continue
            cur = self.classes[c.name]
            other = self.uplinks.get(cur.uplink or "") if cur.uplink != uplink else None
            if (
                cur.route != "via"
                or other is None
                or other.health not in USABLE
                or other.suppressed
                or not other.carrier
            ):
                return False
        return True

    # -- operator commands ------------------------------------------------------------------------
    def refuse(self, request: str, text: str) -> None:
        self.reply = CommandReply(request, False, text)

    def ttl(self, request: str, ttl: float | None) -> float | None:
        limit = self.policy.control.max_override
        value = min(DEFAULT_OVERRIDE_TTL, limit) if ttl is None else ttl
        if value <= 0:
            self.refuse(request, "the duration must be positive")
            return None
        if value > limit:
            self.refuse(request, f"the duration {value:g}s exceeds control.max_override ({limit:g}s)")
            return None
        return value

    def new_override(
        self, kind: OverrideKind, cls: str | None, ev: ForceClass | DrainUplink | PinProfile, ttl: float
    ) -> Override:
        self.seq += 1
        profile = ev.profile if isinstance(ev, PinProfile) else None
        group = None if isinstance(ev, PinProfile) else ev.group
        return Override(
            f"o{self.seq}", kind, cls, ev.uplink, ev.reason, ev.by, self.now, self.now + ttl, ev.force, profile, group
        )

    def force_class(self, ev: ForceClass) -> None:
        pol = self.policy
        if ev.cls not in pol.classes:
            return self.refuse(ev.request, f'unknown class "{ev.cls}" (classes: {", ".join(pol.classes)})')
        spec = pol.uplinks.get(ev.uplink)
        if spec is None:
            return self.refuse(ev.request, f'unknown uplink "{ev.uplink}" (uplinks: {", ".join(pol.uplinks)})')
        if not spec.admits(ev.cls):
            kind = "metered uplink" if spec.metered else "uplink"
            return self.refuse(
                ev.request,
                f'{kind} "{ev.uplink}" does not admit class "{ev.cls}" (admits: {", ".join(sorted(spec.admit or []))})',
            )
        if not ev.reason.strip():
            return self.refuse(ev.request, "a reason is required: it goes into the history and the alarm")
        ttl = self.ttl(ev.request, ev.ttl)
        if ttl is None:
            return None
        u = self.uplinks[ev.uplink]
        startable = spec.standby.cold and u.lifecycle in (Lifecycle.STANDBY, Lifecycle.FAILED, Lifecycle.ACTIVATING)
        if not ev.force and not startable and not usable(self.snapshot(), ev.uplink):
            return self.refuse(
                ev.request,
                f"refused: {why_unusable(self.snapshot(), ev.uplink)}; add --force to pin the class there anyway",
            )
        replaced = [o for o in self.overrides if o.kind == "force" and o.cls == ev.cls]
        for o in replaced:
            self.overrides.remove(o)
        o = self.new_override("force", ev.cls, ev, ttl)
        self.overrides.append(o)
        text = f"override {o.id}: class {ev.cls} -> {ev.uplink} for {ttl:g}s"
        if replaced:
            text += f" (replaces {', '.join(r.id for r in replaced)})"
        if startable:
            text += f"; {ev.uplink} is cold standby and will be activated"
        self.reply = CommandReply(ev.request, True, text, override=o.id)
        return None

    def drain(self, ev: DrainUplink) -> None:
        pol = self.policy
        if ev.uplink not in pol.uplinks:
            return self.refuse(ev.request, f'unknown uplink "{ev.uplink}" (uplinks: {", ".join(pol.uplinks)})')
        if not ev.reason.strip():
            return self.refuse(ev.request, "a reason is required: it goes into the history and the alarm")
        ttl = self.ttl(ev.request, ev.ttl)
        if ttl is None:
            return None
        replaced = [o for o in self.overrides if o.kind == "drain" and o.uplink == ev.uplink]
        for o in replaced:
            self.overrides.remove(o)
        o = self.new_override("drain", None, ev, ttl)
        self.overrides.append(o)
        if not ev.force:
            trial = self.snapshot()
            stranded = [
                c.name
                for c in pol.classes.values()
                if trial.classes[c.name].route == "via"
                and candidate(c, pol, trial).route in ("blackhole", "unreachable", "pending")
                and not candidate(c, pol, trial).pending
            ]
            if stranded:
                self.overrides.remove(o)
                self.overrides.extend(replaced)
                self.seq -= 1
                return self.refuse(
                    ev.request,
                    f"refused: draining {ev.uplink} leaves class(es) {', '.join(stranded)} with no usable uplink; "
                    "add --force to drain anyway",
                )
        self.reply = CommandReply(ev.request, True, f"override {o.id}: drain {ev.uplink} for {ttl:g}s", override=o.id)
        return None

    def pin_profile(self, ev: PinProfile) -> None:
        """An operator's pin of a modem uplink's profile; plan_profiles switches to it in this step."""
        pol = self.policy
        spec = pol.uplinks.get(ev.uplink)
        if spec is None:
            return self.refuse(ev.request, f'unknown uplink "{ev.uplink}" (uplinks: {", ".join(pol.uplinks)})')
        if spec.modem is None:
            with_modem = ", ".join(n for n, u in pol.uplinks.items() if u.modem is not None) or "none"
            return self.refuse(
                ev.request, f'uplink "{ev.uplink}" has no modem profiles (uplinks with profiles: {with_modem})'
            )
        names = [p.name for p in spec.modem.profiles]
        if ev.profile not in names:
            return self.refuse(
                ev.request, f'uplink "{ev.uplink}" has no profile "{ev.profile}" (profiles: {", ".join(names)})'
            )
        if not ev.reason.strip():
            return self.refuse(ev.request, "a reason is required: it goes into the history and the alarm")
        ttl = self.ttl(ev.request, ev.ttl)
        if ttl is None:
            return None
        v = self.modems[ev.uplink]
        failed = pf.judged_failed(spec.modem, v, ev.profile, self.now)
        if failed is not None and not ev.force:
            return self.refuse(ev.request, f"refused: {failed}; add --force to pin it anyway")
        replaced = [o for o in self.overrides if o.kind == "profile" and o.uplink == ev.uplink]
        for o in replaced:
            self.overrides.remove(o)
        o = self.new_override("profile", None, ev, ttl)
        self.overrides.append(o)
        text = f"override {o.id}: {ev.uplink} on profile {ev.profile} for {ttl:g}s"
        if replaced:
            text += f" (replaces {', '.join(r.id for r in replaced)})"
        if v.phase is Phase.SWITCHING and v.target == ev.profile:
            text += "; the switch to it is in flight"
        elif v.phase is Phase.SWITCHING:
            text += f"; once the switch to {v.target} in flight ends"
        elif v.profile == ev.profile:
            text += "; the modem uses it already"
        elif v.phase is Phase.UNKNOWN:
            text += "; the modem has not reported yet: the switch waits for its first report"
        self.reply = CommandReply(ev.request, True, text, override=o.id)
        return None

    def release(self, ev: Release) -> None:
        if ev.override is None:
            gone = list(self.overrides)
            self.overrides.clear()
            text = f"released {', '.join(o.id for o in gone)}" if gone else "there were no overrides"
            self.reply = CommandReply(ev.request, True, text)
            return
        match = [o for o in self.overrides if o.id == ev.override]
        if not match:
            known = ", ".join(o.id for o in self.overrides) or "none"
            self.refuse(ev.request, f'no override "{ev.override}" (active: {known})')
            return
        self.overrides.remove(match[0])
        self.reply = CommandReply(ev.request, True, f"released {match[0].describe()}", override=match[0].id)

    # -- timers and decisions ---------------------------------------------------------------------
    def expire_overrides(self) -> None:
        for o in [o for o in self.overrides if o.expires <= self.now]:
            self.overrides.remove(o)
            self.notice("info", o.id, Cause("override-expired", f"{o.describe()} expired"))

    def update_uplinks(self, only: frozenset[str] | None = None) -> None:
        """Re-judge uplinks; `only` limits it to those whose probes alone changed (and timers due)."""
        for name, spec in self.policy.uplinks.items():
            u = self.uplinks[name]
            if only is not None and name not in only and not self.timer_due(name, u):
                continue
            if (
                u.lifecycle is Lifecycle.ACTIVATING
                and u.activation_deadline is not None
                and self.now >= u.activation_deadline
            ):
                t = spec.standby.activation_time
                self.fail_activation(name, u, Cause("activate-timeout", f"not passing traffic {t:g}s after activation"))
                continue
            u, lifted = hl.update_damping(spec, u, self.now)
            if lifted is not None:
                self.clear_alarm("damped", name, lifted)
            was_suppressed = u.suppressed
            u = hl.evaluate(spec, u, self.now)
            if u.suppressed and not was_suppressed:
                self.raise_alarm(
                    "damped",
                    name,
                    "warning",
                    Cause(
                        "damped",
                        f"flapping: penalty {u.penalty:.0f} > suppress {spec.damping.suppress:g}",
                        (("penalty", f"{u.penalty:.0f}"),),
                    ),
                )
            self.uplinks[name] = u

    def timer_due(self, name: str, u: UplinkState) -> bool:
        spec = self.policy.uplinks[name]
        due = hl.next_deadline(spec, u)
        return (due is not None and due <= self.now) or (
            u.activation_deadline is not None and u.activation_deadline <= self.now
        )

    def assign(self) -> dict[str, Choice]:
        choices: dict[str, Choice] = {}
        # One snapshot serves every class: a class's choice reads no other class's assignment.
        view = self.snapshot()
        for name, spec in self.policy.classes.items():
            choice, ready_at = choose(spec, self.policy, view, self.now)
            choices[name] = choice
            if ready_at is not None:
                self.preempt_at.append(ready_at)
            cur = self.classes[name]
            if choice.pending:
                continue
            if (choice.uplink, choice.route) == (cur.uplink, cur.route):
                if choice.override != cur.by_override:
                    self.classes[name] = replace(cur, by_override=choice.override)
                continue
            self.classes[name] = ClassState(
                choice.uplink, choice.route, self.now, choice.cause, choice.override, exposed=cur.exposed
            )
            self.effects.append(SwitchClass(name, cur.uplink, choice.uplink, choice.route, choice.cause))
            if cur.uplink is not None and cur.route == "via":
                # Also when the class now has no route at all: its flows keep the old uplink's NAT
                # in conntrack and would leave by the next uplink with a source it does not own.
                back = is_failback(spec, cur, choice.uplink)
                if spec.flush_on_failback if back else spec.flush_on_failover:
                    self.effects.append(FlushConntrack(name, cur.uplink, choice.cause))
            if choice.route in ("blackhole", "unreachable"):
                self.raise_alarm("class-down", name, "critical", choice.cause)
                self.clear_alarm("class-backup", name, choice.cause)
            elif choice.uplink is not None and choice.uplink != primary_uplink(self.policy, name):
                self.clear_alarm("class-down", name, choice.cause)
                self.raise_alarm("class-backup", name, "warning", choice.cause)
            else:
                self.clear_alarm("class-down", name, choice.cause)
                self.clear_alarm("class-backup", name, choice.cause)
        return choices

    def plan_standby(self, choices: dict[str, Choice]) -> None:
        needed: set[str] = set()
        for name, ch in choices.items():
            needed |= ch.needs
            cur = self.classes[name]
            if cur.uplink is not None:
                needed.add(cur.uplink)
        if prewarms(self.policy):
            view = self.snapshot()
            if self.readiness_moved(view):
                warm: dict[str, list[str]] = {}  # cold uplink -> why each class warms it
                for name, cs in self.policy.classes.items():
                    r = redundancy(cs, self.policy, view)
                    for target in prewarm_targets(cs, self.policy, view, r):
                        last = f"its last usable uplink {r.usable[0]}" if r.usable else "no usable uplink"
                        warm.setdefault(target, []).append(f"{name} is down to {last}")
                self.prewarm = {n: "; ".join(why) for n, why in warm.items()}
        elif self.prewarm:
            self.prewarm = {}
        prewarm = self.prewarm
        needed |= prewarm.keys()
        self.needed = needed
        for name, spec in self.policy.uplinks.items():
            if not spec.standby.cold:
                continue
            u = self.uplinks[name]
            sb = spec.standby
            if name in needed:
                if u.idle_since is not None:
                    self.uplinks[name] = u = replace(u, idle_since=None)
                retry = u.lifecycle is Lifecycle.FAILED and (u.retry_at is None or self.now >= u.retry_at)
                if u.lifecycle is Lifecycle.STANDBY or retry:
                    users = sorted(c for c, ch in choices.items() if name in ch.needs)
                    if users or name not in prewarm:
                        cause = Cause("standby-needed", f"needed by {', '.join(users) or 'an override'}")
                    else:
                        why = prewarm[name]
                        cause = Cause("prewarm", f"pre-warming: {why}", (("prewarm", why),))
                    self.activate_standby(name, cause)
            elif self.drill is not None and self.drill.uplink == name:
                continue  # up for a drill, which switches it off when it is done
            elif u.lifecycle is not Lifecycle.STANDBY:
                idle = u.idle_since
                if idle is None:
                    idle = self.now
                    self.uplinks[name] = u = replace(u, idle_since=idle)
                if self.now - idle >= sb.release_after:
                    self.release_standby(
                        name, Cause("standby-release", f"no class needed it for {sb.release_after:g}s")
                    )

    def activate_standby(self, name: str, cause: Cause) -> None:
        """Switch a cold uplink on: the one way to, for a class that needs it and for a drill alike."""
        sb = self.policy.uplinks[name].standby
        self.effects.append(ActivateStandby(name, sb.activate, cause))
        u = switch(self.uplinks[name], Lifecycle.ACTIVATING, self.now, cause)
        self.uplinks[name] = replace(
            u,
            activated=False,
            activation_deadline=self.now + sb.activation_time,
            retry_at=None,
            targets={},
            fresh_successes=0,
        )

    def release_standby(self, name: str, cause: Cause) -> None:
        """Switch a cold uplink off."""
        sb = self.policy.uplinks[name].standby
        self.effects.append(DeactivateStandby(name, sb.deactivate, cause))
        u = switch(self.uplinks[name], Lifecycle.STANDBY, self.now, cause)
        self.uplinks[name] = replace(
            u,
            activated=False,
            activation_deadline=None,
            idle_since=None,
            targets={},
            clear_since=None,
            degraded_clear_since=None,
        )

    def watch_redundancy(self) -> None:
        """Raise a class's alarm when it is down to its last usable uplink; clear it when one more is."""
        view: EngineState | None = None
        for name, cs in self.policy.classes.items():
            c = self.classes[name]
            severity = cs.redundancy.alarm
            if severity is None:
                if c.exposed:  # the policy stopped asking: say the alarm is over rather than leave it hanging
                    self.classes[name] = replace(c, exposed=False)
                    self.clear_alarm("redundancy", name, Cause("redundancy-unwatched", "the policy no longer asks"))
                continue
            if view is None:
                view = self.snapshot()
                if not self.readiness_moved(view):
                    return
            r = redundancy(cs, self.policy, view)
            if not r.judged or r.exposed == c.exposed:
                continue
            self.classes[name] = replace(c, exposed=r.exposed)
            evidence = (("usable", ",".join(r.usable)), ("standby", ",".join(r.standby)))
            if r.exposed:
                last = f"down to its last usable uplink {r.usable[0]}" if r.usable else "left with no usable uplink"
                cause = Cause("redundancy-lost", f"{last}; {r.describe()}", evidence)
                self.raise_alarm("redundancy", name, severity, cause)
            else:
                cause = Cause("redundancy-restored", f"{r.describe()}", evidence)
                self.clear_alarm("redundancy", name, cause)

    def watch_verification(self) -> None:
        """Mark an uplink whose proof of working is older than its verify.within (a drilled uplink's
        valid_for, compile.proof_lifetime) stale, and alarm if the policy asks for it."""
        for name, spec in self.policy.uplinks.items():
            if spec.verify is None:
                continue
            u = self.uplinks[name]
            due = verify_deadline(spec, u, self.now)
            stale = due is not None and self.now >= due
            if stale == u.verify_stale:
                continue
            self.uplinks[name] = replace(u, verify_stale=stale)
            last = last_verified(u, self.now)
            within = spec.verify.within
            if stale:
                seen = "never seen working" if last is None else f"last seen working {self.now - last:.0f}s ago"
                cause = Cause(
                    "unverified",
                    f"{name} {seen}: longer than verify.within {within:g}s",
                    (("verified_at", "never" if last is None else f"{last:g}"),),
                )
                if spec.verify.alarm is not None:
                    self.raise_alarm("unverified", name, spec.verify.alarm, cause)
            else:
                self.clear_alarm("unverified", name, Cause("verified", f"{name} seen working again ({u.status})"))

    def settle_restart(self, restart: Restart) -> None:
        """The first step after a start: switch off every cold uplink that is off as far as this run
        knows (STANDBY once this step planned standby, so never one it activates), as the previous run
        may have died with it on; and record the drill it died in as aborted (restored_state has set
        its result). The standby 'off' command is idempotent, so sending it to an uplink that is off
        costs nothing."""
        released = []
        for name, spec in self.policy.uplinks.items():
            u = self.uplinks.get(name)
            if spec.standby.cold and u is not None and u.lifecycle is Lifecycle.STANDBY:
                released.append(name)
        run = restart.drill
        if run is not None and restart.cause is not None:
            deactivated = run.uplink in released
            self.effects.append(
                DrillChanged(run.uplink, run.phase.value, "idle", restart.cause, "aborted", deactivated)
            )
        for name in released:
            why = f"failoverd started and no class is routed via {name}: switched off in case the last run left it on"
            if run is not None and run.uplink == name:
                why += " (it was drilling it)"
            self.effects.append(
                DeactivateStandby(name, self.policy.uplinks[name].standby.deactivate, Cause("restart-release", why))
            )
        # The alarm of a backup whose last drill failed holds across the restart (drills.json keeps it).
        for name, sch in self.drill_schedules.items():
            drill = self.policy.drills.get(name)
            if sch.alarmed and drill is not None:
                last = f": {sch.last.cause.text}" if sch.last is not None else ""
                cause = Cause("drill-failed", f"backup {name} failed its last drill (before the restart){last}")
                self.raise_alarm("drill-failed", name, drill.severity, cause)

    # -- alarms (engine/alarms.py) ----------------------------------------------------------------
    def raise_alarm(self, kind: str, subject: str, severity: Severity, cause: Cause) -> None:
        """Raise `kind` on `subject`; nothing if it is active already at this severity."""
        aid = alarm_id(kind, subject)
        cur = self.alarms.get(aid)
        if cur is not None and cur.severity == severity:
            return
        self.alarms_changed = True
        carried = self.carried.pop(aid, None) if cur is None else None
        if carried is not None:
            # Active before the restart: it resumes with its age and acknowledgement, and no one is
            # told of it again (the notifiers skip "resumed").
            self.alarms[aid] = ActiveAlarm(
                aid,
                kind,
                subject,
                severity,
                carried.raised,
                cause,
                carried.acked_by,
                self.now if carried.acked_by else None,
                carried.ack_reason,
                notified_at=self.now,
            )
            self.effects.append(Alarm(severity, subject, cause, aid, "resumed", carried.acked_by or ""))
            return
        # A new severity is news: raised again, and an acknowledgement of the old one no longer holds.
        raised = self.now if cur is None else cur.raised
        self.alarms[aid] = ActiveAlarm(aid, kind, subject, severity, raised, cause, notified_at=self.now)
        self.effects.append(Alarm(severity, subject, cause, aid, "raised"))

    def clear_alarm(self, kind: str, subject: str, cause: Cause) -> None:
        """The condition of `kind` on `subject` ended; nothing if it was not active."""
        aid = alarm_id(kind, subject)
        gone = self.alarms.pop(aid, None)
        if gone is not None:  # with the severity it had, as Alertmanager resolves an alert with its labels
            self.alarms_changed = True
            self.effects.append(Alarm(gone.severity, subject, cause, aid, "cleared"))

    def notice(self, severity: Severity, subject: str, cause: Cause) -> None:
        """A one-off event worth an operator's eye that has no condition to clear."""
        self.effects.append(Alarm(severity, subject, cause))

    def service_alarm(self, ev: ServiceAlarm) -> None:
        if ev.state == "raised":
            self.raise_alarm(ev.kind, ev.subject, ev.severity, Cause(ev.kind, ev.text))
        elif ev.state == "cleared":
            self.clear_alarm(ev.kind, ev.subject, Cause(f"{ev.kind}-ended", ev.text))
        else:
            self.notice(ev.severity, ev.subject, Cause(ev.kind, ev.text))

    def ack_alarm(self, ev: AckAlarm) -> None:
        cur = self.alarms.get(ev.id)
        if cur is None:
            active = ", ".join(sorted(self.alarms)) or "none"
            self.reply = CommandReply(ev.request, False, f'no active alarm "{ev.id}" (active: {active})')
            return
        if not ev.reason.strip():
            self.reply = CommandReply(ev.request, False, "an acknowledgement needs a reason")
            return
        self.alarms[ev.id] = replace(cur, acked_by=ev.by, acked_at=self.now, ack_reason=ev.reason)
        self.alarms_changed = True
        text = f"{ev.id} acknowledged by {ev.by}: {ev.reason}"
        self.effects.append(Alarm(cur.severity, cur.subject, Cause("acked", text), ev.id, "acked", ev.by))
        self.reply = CommandReply(ev.request, True, text)

    def escalate(self) -> None:
        """Unacknowledged alarms take the policy's escalation steps as their delays pass, and are repeated.

        The alarms are walked only when the first notification is due, or when they or the policy
        changed in this step; otherwise nothing can be due (notify_at says when something will be)."""
        due = self.notify_at is not None and self.now >= self.notify_at
        if not (due or self.alarms_changed or self.reloaded):
            return
        self._escalate_and_repeat()
        self.notify_at = first_notification(self.alarms.values(), self.policy.alarms)

    def _escalate_and_repeat(self) -> None:
        spec = self.policy.alarms
        if not spec.escalation and spec.repeat is None:
            return
        for aid, a in list(self.alarms.items()):
            if a.acked_by is not None or not spec.notify(a.severity, a.kind, a.subject):
                continue  # handled, or no one was told of it: nothing to escalate
            level = sum(1 for after, _ in spec.escalation if self.now >= a.raised + after)
            if level > a.level:
                for k in range(a.level + 1, level + 1):
                    after, notify = spec.escalation[k - 1]
                    text = f"{aid} not acknowledged {after:g}s after it was raised: to {', '.join(notify)}"
                    cause = Cause("escalated", text, (("level", str(k)),))
                    self.effects.append(Alarm(a.severity, a.subject, cause, aid, "escalated", level=k))
                self.alarms[aid] = replace(a, level=level, notified_at=self.now)
            elif spec.repeat is not None and self.now >= (a.notified_at or a.raised) + spec.repeat:
                text = f"{aid} still raised, not acknowledged, {self.now - a.raised:.0f}s after it was raised"
                self.effects.append(
                    Alarm(a.severity, a.subject, Cause("repeated", text), aid, "repeated", level=a.level)
                )
                self.alarms[aid] = replace(a, notified_at=self.now)

    def watch_uplink_alarms(self, before: Mapping[str, UplinkState]) -> None:
        """uplink-down and uplink-degraded follow the uplinks' health; alarms of what left the policy end."""
        for name, u in self.uplinks.items():
            b = before.get(name)
            if b is not None and b.health is u.health and b.lifecycle is u.lifecycle:
                continue
            if u.lifecycle is Lifecycle.ACTIVE and u.health is Health.DOWN:
                self.clear_alarm("uplink-degraded", name, u.cause)
                self.raise_alarm("uplink-down", name, "warning", u.cause)
            elif u.lifecycle is Lifecycle.ACTIVE and u.health is Health.DEGRADED:
                self.clear_alarm("uplink-down", name, u.cause)
                self.raise_alarm("uplink-degraded", name, "warning", u.cause)
            else:
                self.clear_alarm("uplink-down", name, u.cause)
                self.clear_alarm("uplink-degraded", name, u.cause)
            if u.lifecycle is not Lifecycle.FAILED:
                self.clear_alarm("standby-failed", name, u.cause)
        if not self.reloaded:
            return  # only a reload takes an uplink or a class away (not every probe round's business)
        gone = Cause("policy-reload", "no longer in the policy")
        for a in list(self.alarms.values()):
            kind = SUBJECT_OF.get(a.kind)
            if (kind == "uplink" and a.subject not in self.uplinks) or (
                kind == "class" and a.subject not in self.classes
            ):
                self.clear_alarm(a.kind, a.subject, gone)

    def finish(self) -> tuple[EngineState, tuple[Effect, ...]]:
        before = self.before.uplinks
        changed = [
            UplinkChanged(n, before[n].status, u.status, u.cause)
            for n, u in self.uplinks.items()
            if n in before and (before[n].health is not u.health or before[n].lifecycle is not u.lifecycle)
        ]
        self.effects = changed + self.effects
        self.watch_uplink_alarms(before)
        self.escalate()
        effects = self.effects
        if self.reply is not None:
            moves = tuple(
                f"{e.cls}: {e.from_uplink or '-'} -> {e.to_uplink or e.route}"
                for e in effects
                if isinstance(e, SwitchClass)
            )
            effects.append(replace(self.reply, changes=moves, by=self.by))
        state = self.snapshot()
        _check_invariants(state, self.policy)
        return replace(state, wake_at=_wake_at(state, self.policy, self.preempt_at)), tuple(effects)


def _check_invariants(state: EngineState, policy: Policy) -> None:
    for name, c in state.classes.items():
        if c.route == "via":
            if c.uplink is None or c.uplink not in policy.uplinks:
                raise EngineBug(f"class {name} routed via unknown uplink {c.uplink}")
            if not policy.uplinks[c.uplink].admits(name):
                raise EngineBug(f"class {name} on uplink {c.uplink}, which does not admit it")


def step(state: EngineState, event: Event, policy: Policy, now: float) -> tuple[EngineState, tuple[Effect, ...]]:
    """Apply one event at monotonic time `now`; return the next state and the effects to carry out."""
    if now < state.now:
        raise EngineBug(f"time went backwards: {now} < {state.now} (the engine takes monotonic time only)")
    w = _Work(state, policy, now)
    match event:
        case ProbeResult():
            w.probes((event,))
            dr.fold_probes(w, (event,))
        case ProbeBatch():
            w.probes(event.results)
            dr.fold_probes(w, event.results)
        case CarrierChanged():
            w.carrier(event)
        case CarrierBatch():
            for change in event.changes:
                w.carrier(change)
        case StandbyResult():
            w.standby_result(event)
        case ForceClass():
            w.by = event.by
            w.force_class(event)
        case DrainUplink():
            w.by = event.by
            w.drain(event)
        case PinProfile():
            w.by = event.by
            w.pin_profile(event)
        case Release():
            w.by = event.by
            w.release(event)
        case ClockChanged():
            w.clock_changed(event)
        case PolicyReloaded():
            w.policy_reloaded()
        case RunDrill():
            w.by = event.by
            dr.run_now(w, event)
        case AckAlarm():
            w.by = event.by
            w.ack_alarm(event)
        case ServiceAlarm():
            w.service_alarm(event)
        case DrillWindow():
            dr.window(w, event)
        case ModemState():
            w.modem_state(event)
        case ProfileSwitched():
            w.profile_switched(event)
        case Tick():
            pass
        case _:
            assert_never(event)
    w.expire_overrides()
    if w.modems:
        w.modem_timers()
    w.update_uplinks(only=_probed(event))
    if w.modems:
        w.plan_profiles()
    choices = w.assign()
    w.watch_verification()  # first: redundancy reads the staleness it sets
    w.plan_standby(choices)
    dr.advance(w)
    if state.restart is not None:
        w.settle_restart(state.restart)
    w.watch_redundancy()
    return w.finish()


def _probed(event: Event) -> frozenset[str] | None:
    """The uplinks whose probes are the whole news of this event (None: re-judge every uplink)."""
    if isinstance(event, ProbeResult):
        return frozenset((event.uplink,))
    if isinstance(event, ProbeBatch):
        return frozenset(r.uplink for r in event.results)
    return None


def _wake_at(state: EngineState, policy: Policy, preempt_at: list[float]) -> float | None:
    times: list[float] = [o.expires for o in state.overrides] + preempt_at
    times += dr.wake_times(state.drill, state.drills, policy)
    for name, spec in policy.uplinks.items():
        u = state.uplinks[name]
        t = hl.next_deadline(spec, u)
        if t is not None:
            times.append(t)
        if u.lifecycle is Lifecycle.ACTIVATING and u.activation_deadline is not None:
            times.append(u.activation_deadline)
        if u.lifecycle is Lifecycle.FAILED and u.retry_at is not None:
            times.append(u.retry_at)
        if spec.standby.cold and u.idle_since is not None:
            times.append(u.idle_since + spec.standby.release_after)
        due = verify_deadline(spec, u, state.now)
        if due is not None and not u.verify_stale:
            times.append(due)
    for name, v in state.modems.items():
        modem = policy.uplinks[name].modem
        if modem is not None:
            times += pf.wake_times(modem, v, state.uplinks[name])
    if state.notify_at is not None:
        times.append(state.notify_at)
    future = [t for t in times if t > state.now]
    return min(future) if future else None


def next_deadline(state: EngineState) -> float | None:
    """The earliest monotonic time at which a Tick could change something; None if only events can."""
    return state.wake_at
