"""Replay a timeline against a policy: a simulated world feeds probe results to the real engine.

The world holds, per uplink, carrier, loss, RTT and jitter (and per probe target, loss); the timeline
changes them at given monotonic times. Probes go out on the daemon's own schedule (probes/schedule.py:
one round per interval on a grid of it, an uplink's targets in step) and are answered after their RTT,
or reported lost at their timeout, so detection times come out as they do on a gateway. Engine timers
run exactly: the simulator ticks the engine at `next_deadline()`. What comes out is the daemon's
history (engine/records.py), stamped with the simulated monotonic time and a wall clock beside it.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from failoverd.control.commands import COMMANDS, BadRequest, to_events, validate
from failoverd.drillwindows import window_event
from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.drillstate import DrillPhase
from failoverd.engine.records import effect_record, note_record, stamped
from failoverd.engine.state import EngineState, Override, initial_state
from failoverd.engine.step import next_deadline, step
from failoverd.errors import PolicyError
from failoverd.policy.load import locate, parse_document
from failoverd.policy.model import CanarySpec, Policy, ProbeSpec, ProfileSpec
from failoverd.policy.schema import Duration, Mccmnc, NonNegDuration, Strict
from failoverd.probes.schedule import first_tick, next_tick, probed, round_start, rounds

# -- the timeline file ---------------------------------------------------------------------------


class Condition(Strict):
    carrier: Literal["up", "down"] | None = None
    loss: float | None = Field(default=None, ge=0, le=100)
    rtt_ms: float | None = Field(default=None, ge=0)
    jitter_ms: float | None = Field(default=None, ge=0)


class Step(Condition):
    at: NonNegDuration
    note: str | None = None
    uplink: str | None = None
    target: str | None = None  # a probe target (address or URL) of that uplink
    carrier_outage: str | None = None  # every uplink of this carrier loses all traffic
    carrier_restored: str | None = None
    flap: Duration | None = None  # toggle the uplink's carrier with this period ...
    until: NonNegDuration | None = None  # ... until then
    command: Literal["failover", "drain", "modem-use", "release", "drill-run", "ack"] | None = None
    alarm: str | None = None  # with ack: the alarm's id
    by: str | None = None  # who sent the command (default "simulation")
    class_: str | None = Field(default=None, alias="class")
    to: str | None = None
    profile: str | None = None  # with modem-use: the profile to pin
    for_: NonNegDuration | None = Field(default=None, alias="for")
    reason: str | None = None
    force: bool = False
    override: str | None = None
    all: bool = False
    clock: Literal["unknown", "sane", "holdover", "suspect", "insane"] | None = None
    bound: float | None = None
    wall_shift: float = 0.0  # with clock: how far the wall clock is off from then on
    disagreeing: list[str] = Field(default_factory=list)  # uplinks over which only falsetickers answer
    plmn_outage: Mccmnc | None = None  # a mobile network fails nationwide: registered modems pass no data
    plmn_restored: Mccmnc | None = None


class Standby(Strict):
    activation: Literal["ok", "fail", "hang"] = "ok"
    delay: NonNegDuration = 5.0
    # The link passes traffic for this long after each successful activation, then nothing (a
    # terminal that comes up and loses its lock): activation ok, probes failing. None: for good.
    passes_for: NonNegDuration | None = None


class ModemWorld(Strict):
    """A cellular uplink's modem (an uplink with profiles): which SIMs work, and how long things take."""

    # Per SIM slot: live, dead (the network rejects the SIM), or no-coverage (searches for ever).
    slots: dict[int, Literal["live", "dead", "no-coverage"]] = Field(default_factory=dict)
    register_delay: NonNegDuration = 5.0  # from attach (or Register) to registered with a bearer
    slot_switch_delay: NonNegDuration = 20.0  # a SIM-slot switch: the modem leaves and comes back
    # The profile the modem is on when the daemon starts, registered with a bearer already (a restart
    # finds it where the last run left it). None: the policy's first profile, registering from t=0.
    starts_on: str | None = None


class UplinkWorld(Condition):
    standby: Standby = Standby()
    modem: ModemWorld = ModemWorld()


def _wall_seconds(value: object) -> object:
    """A UTC timestamp as YAML gives it (a datetime, naive meaning UTC) or as text: seconds since the epoch."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a time such as 2026-01-04T02:20:00Z") from exc
    if isinstance(value, datetime):
        return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()
    return value


class Timeline(Strict):
    """a timeline: duration, events"""

    duration: Duration
    seed: int = 1
    # The wall clock (UTC) at the start, for drills in a weekly window: 2026-01-04T01:50:00Z.
    wall_start: Annotated[float, BeforeValidator(_wall_seconds)] | None = None
    world: dict[str, UplinkWorld] = Field(default_factory=dict)
    events: list[Step] = Field(default_factory=list)


def command_request(s: Step) -> dict[str, Any]:
    """A timeline's command step as the request failoverctl would send for it: the command table
    (failoverd.control.commands) validates it and makes the engine's event, as on a gateway."""
    given = {
        "class": s.class_,
        "to": s.to,
        "uplink": s.uplink,
        "profile": s.profile,
        "for": s.for_,
        "reason": s.reason,
        "force": s.force or None,
        "override": s.override,
        "all": s.all or None,
        "alarm": s.alarm,
    }
    request: dict[str, Any] = {"cmd": s.command, "by": s.by or "simulation"}
    for a in COMMANDS[s.command or ""].args:
        if given.get(a.key) is not None:
            request[a.key] = given[a.key]
    return request


def _check(t: Timeline, policy: Policy) -> list[tuple[tuple[str | int, ...], str]]:
    bad: list[tuple[tuple[str | int, ...], str]] = []
    for name in t.world:
        if name not in policy.uplinks:
            bad.append((("world", name), f'unknown uplink "{name}"'))
    carriers = {u.operator for u in policy.uplinks.values() if u.operator}
    plmns = {
        plmn
        for u in policy.uplinks.values()
        if u.modem
        for p in u.modem.profiles
        for plmn in (*p.plmns, p.plmn)
        if plmn
    }
    for name, w in t.world.items():
        if name in policy.uplinks and w.modem != ModemWorld() and policy.uplinks[name].modem is None:
            bad.append((("world", name, "modem"), f'uplink "{name}" has no profiles: it has no modem to simulate'))
        modem = policy.uplinks[name].modem if name in policy.uplinks else None
        names = [p.name for p in modem.profiles] if modem is not None else []
        if modem is not None and w.modem.starts_on is not None and w.modem.starts_on not in names:
            text = f'uplink "{name}" has no profile "{w.modem.starts_on}" (profiles: {", ".join(names)})'
            bad.append((("world", name, "modem", "starts_on"), text))
    for i, s in enumerate(t.events):
        at = ("events", i)
        if s.uplink is not None and s.uplink not in policy.uplinks:
            bad.append(((*at, "uplink"), f'unknown uplink "{s.uplink}" (uplinks: {", ".join(policy.uplinks)})'))
        elif s.target is not None:
            targets = {p.target for p in policy.uplinks[s.uplink].probes} if s.uplink else set()
            drill = policy.drills.get(s.uplink or "")
            if drill is not None and drill.canary is not None:
                targets.add(drill.canary.probe.target)  # the service the drill's canary reaches through it
            if s.target not in targets:
                bad.append(((*at, "target"), f'uplink "{s.uplink}" has no probe target "{s.target}"'))
        for key in ("carrier_outage", "carrier_restored"):
            name = getattr(s, key)
            if name is not None and name not in carriers:
                bad.append(((*at, key), f'no uplink has carrier "{name}" (carriers: {", ".join(sorted(carriers))})'))
        if (s.flap is not None or s.carrier or s.loss is not None or s.rtt_ms is not None) and s.uplink is None:
            bad.append((at, "this change needs an uplink"))
        for key in ("plmn_outage", "plmn_restored"):
            plmn = getattr(s, key)
            if plmn is not None and plmn not in plmns:
                bad.append(((*at, key), f"no profile uses PLMN {plmn} (PLMNs: {', '.join(sorted(plmns)) or 'none'})"))
        if s.flap is not None and s.until is None:
            bad.append(((*at, "flap"), "flap needs until"))
        if s.command is not None:
            try:
                _, args = validate(command_request(s))
                to_events(policy, s.command, args)
            except BadRequest as exc:
                bad.append(((*at, "command"), str(exc)))
    return bad


def load_timeline(path: str | Path, policy: Policy) -> Timeline:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([]) from exc
    timeline, locator = parse_document(text, str(p), Timeline)
    bad = _check(timeline, policy)
    if bad:
        raise locate(locator, str(p), bad)
    return timeline


# -- the simulated world ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Link:
    carrier: bool = True
    loss: float = 0.0
    rtt: float = 0.02
    jitter: float = 0.0
    powered: bool = True  # cold standby links are off until activated
    target_loss: dict[str, float] = field(default_factory=dict)
    outage: bool = False  # carrier-wide outage: link up, nothing passes
    activations: int = 0  # successful activations so far: a fade belongs to one of them
    faded: bool = False  # activated, passed traffic for the world's passes_for, and nothing since
    modem_blocked: bool = False  # a modem uplink not registered with a bearer, or on a PLMN in outage

    def answer(self, rng: random.Random, target: str, timeout: float) -> float | None:
        """One probe's fate through this link: its RTT if it is answered within `timeout`, else None."""
        loss = max(self.loss, self.target_loss.get(target, 0.0))
        rtt = max(0.0, self.rtt + rng.uniform(-self.jitter, self.jitter))
        passes = (
            self.carrier
            and self.powered
            and not self.outage
            and not self.faded
            and not self.modem_blocked
            and rng.uniform(0, 100) >= loss
        )
        return rtt if passes and rtt <= timeout else None


@dataclass(slots=True)
class _Modem:
    """A simulated modem: the profile it uses, the network it is attached to (None: not attached)."""

    profile: ProfileSpec
    world: ModemWorld
    attached: str | None = None
    epoch: int = 0  # bumped by every switch: a pending attach of an older one is void


@dataclass(frozen=True, slots=True)
class _Round:
    """The probes of one interval, sent together at each tick of its grid (as the daemon's Rounds)."""

    interval: float
    probes: tuple[tuple[str, ProbeSpec], ...]
    tick: float


@dataclass(slots=True)
class Simulation:
    policy: Policy
    timeline: Timeline
    wall_epoch: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z: the wall clock at monotonic 0
    records: list[dict[str, Any]] = field(default_factory=list)
    state: EngineState | None = None
    wall_shift: float = 0.0  # how far the wall clock is off, since the timeline's last clock event
    canary_probing: bool = False  # a canary round is queued (while a drill with a canary is CHECKING)
    modems: dict[str, _Modem] = field(default_factory=dict)
    plmns_down: set[str] = field(default_factory=set)

    def run(self) -> list[dict[str, Any]]:
        """The history of the run, record by record as `failoverctl history` shows the daemon's."""
        pol, tl = self.policy, self.timeline
        if tl.wall_start is not None:
            self.wall_epoch = tl.wall_start
        rng = random.Random(tl.seed)
        links = {name: _Link(powered=not u.standby.cold) for name, u in pol.uplinks.items()}
        for name, w in tl.world.items():
            self._apply_condition(links[name], w, None)
        queue: list[tuple[float, int, str, Any]] = []
        seq = 0

        def push(t: float, kind: str, payload: Any) -> None:
            nonlocal seq
            seq += 1
            heapq.heappush(queue, (t, seq, kind, payload))

        for i, s in enumerate(tl.events):
            push(s.at, "step", (i, s))
        for interval, probes in rounds(pol.uplinks).items():
            tick = first_tick(interval, 0.0)
            push(tick, "round", _Round(interval, tuple(probes), tick))
        state = initial_state(pol, 0.0)
        state = self._step(state, ev.Tick(), 0.0, links, push)
        for name, u in pol.uplinks.items():
            if u.modem is not None:
                world = tl.world.get(name, UplinkWorld()).modem
                if world.starts_on is not None:
                    self.modems[name] = _Modem(u.modem.profile(world.starts_on), world)
                    state = self._step(state, self._attach(name, links), 0.0, links, push)
                    continue
                self.modems[name] = _Modem(u.modem.profiles[0], world)
                links[name].modem_blocked = True
                first = ev.ModemState(name, "searching", **_sim_in_use(u.modem.profiles[0]))
                state = self._step(state, first, 0.0, links, push)
                push(world.register_delay, "attach", (name, 0))
        push(0.0, "windows", None)
        requests = 0
        deadline = next_deadline(state)

        while queue:
            t, _, kind, payload = queue[0]
            if t > tl.duration:
                break
            if deadline is not None and deadline < t:
                state = self._step(state, ev.Tick(), deadline, links, push)
                deadline = next_deadline(state)
                continue
            heapq.heappop(queue)
            if kind == "round":
                # The simulated loop is never late: each round goes out at its tick.
                start = round_start(payload.tick, t)
                nxt = next_tick(payload.tick, payload.interval, t)
                push(nxt, "round", _Round(payload.interval, payload.probes, nxt))
                for name, p in payload.probes:
                    if not probed(state, name):
                        continue
                    rtt = links[name].answer(rng, p.target, p.timeout)
                    if rtt is not None:
                        push(start + rtt, "result", ev.ProbeResult(name, p.key, True, rtt))
                    else:
                        push(start + p.timeout, "result", ev.ProbeResult(name, p.key, False, None))
            elif kind == "canary":
                # As the probe service: one canary probe per interval while the drill is CHECKING, its
                # fate that of any packet through the drilled uplink (and of its target there).
                due = _canary_due(pol, state)
                if due is None or due[0] != payload:
                    self.canary_probing = False
                else:
                    name, canary = due
                    p = canary.probe
                    push(t + p.interval, "canary", name)
                    # The same fate as any packet through the link (a faded terminal carries no canary either).
                    rtt = links[name].answer(rng, p.target, p.timeout)
                    if rtt is not None:
                        push(t + rtt, "result", ev.ProbeResult(name, canary.key, True, rtt))
                    else:
                        push(t + p.timeout, "result", ev.ProbeResult(name, canary.key, False, None))
            elif kind == "result":
                # Results due at one moment reach the engine in one step, as the daemon hands them over.
                results = [payload]
                while queue and queue[0][0] == t and queue[0][2] == "result":
                    results.append(heapq.heappop(queue)[3])
                event: ev.Event = ev.ProbeBatch(tuple(results)) if len(results) > 1 else results[0]
                state = self._step(state, event, t, links, push)
            elif kind == "engine":
                if isinstance(payload, ev.StandbyResult) and payload.action == "activate" and payload.ok:
                    link = links[payload.uplink]
                    link.powered = True  # the modem is up when it says so
                    link.activations += 1
                    link.faded = False
                    lasts = tl.world.get(payload.uplink, UplinkWorld()).standby.passes_for
                    if lasts is not None:
                        push(t + lasts, "fade", (payload.uplink, link.activations))
                state = self._step(state, payload, t, links, push)
            elif kind == "windows":
                # As the drill service: each window drill's next opening, in monotonic time, again
                # after it closes (and after a clock event, below).
                for name, drill in pol.drills.items():
                    if drill.window is not None:
                        opening = window_event(name, drill.window, self.wall(t), t)
                        state = self._step(state, opening, t, links, push)
                        push(opening.closes + 1.0, "windows", None)
            elif kind == "attach":
                name, epoch = payload
                if self.modems[name].epoch == epoch:
                    state = self._step(state, self._attach(name, links), t, links, push)
            elif kind == "fade":
                name, activation = payload
                if links[name].activations == activation:  # not since switched off and on again
                    links[name].faded = True
            elif kind == "flap":
                name, period, until = payload
                link = links[name]
                link.carrier = not link.carrier
                state = self._step(state, ev.CarrierChanged(name, link.carrier), t, links, push)
                if t + period / 2 <= until:
                    push(t + period / 2, "flap", payload)
                elif not link.carrier:
                    push(until, "flap", payload)
            elif kind == "step":
                i, s = payload
                for change in self._step_events(s, links, i, requests, state.overrides):
                    requests += 1
                    state = self._step(state, change, t, links, push)
                if s.clock is not None and s.wall_shift:
                    push(t, "windows", None)
                if s.flap is not None and s.uplink is not None:
                    push(t, "flap", (s.uplink, s.flap, s.until or t))
            deadline = next_deadline(state)
        # Let timers that fall before the end run out.
        while (d := next_deadline(state)) is not None and d <= tl.duration:
            state = self._step(state, ev.Tick(), d, links, push)
        self.state = state
        return self.records

    def _attach(self, name: str, links: dict[str, _Link]) -> ev.ModemState:
        """The modem finished registering with its profile: what it reports, and whether data passes."""
        modem = self.modems[name]
        p = modem.profile
        sim = modem.world.slots.get(p.slot or 0, "live")
        if sim == "dead":
            modem.attached = None
            links[name].modem_blocked = True
            reason = "network reject: IMSI unknown in HLR (cause 2)"
            return ev.ModemState(name, "denied", reason=reason, **_sim_in_use(p))
        if sim == "no-coverage":
            modem.attached = None
            links[name].modem_blocked = True
            return ev.ModemState(name, "searching", signal=0, **_sim_in_use(p))
        plmn = p.plmn or "00101"
        modem.attached = plmn
        links[name].modem_blocked = plmn in self.plmns_down
        registration: ev.Registration = "roaming" if p.register is not None else "home"
        return ev.ModemState(name, registration, plmn, "lte", 70, bearer=True, **_sim_in_use(p))

    def _plmn(self, plmn: str, down: bool, links: dict[str, _Link]) -> None:
        """A network fails (or recovers) nationwide: modems on it stay registered, data stops."""
        if down:
            self.plmns_down.add(plmn)
        else:
            self.plmns_down.discard(plmn)
        for name, modem in self.modems.items():
            if modem.attached == plmn:
                links[name].modem_blocked = down

    def wall(self, mono: float) -> float:
        """The simulated wall clock at monotonic time `mono`."""
        return self.wall_epoch + mono + self.wall_shift

    @staticmethod
    def _apply_condition(link: _Link, c: Condition, target: str | None) -> None:
        if c.carrier is not None:
            link.carrier = c.carrier == "up"
        if c.loss is not None:
            if target is None:
                link.loss = c.loss
            else:
                link.target_loss[target] = c.loss
        if c.rtt_ms is not None:
            link.rtt = c.rtt_ms / 1000
        if c.jitter_ms is not None:
            link.jitter = c.jitter_ms / 1000

    def _step_events(
        self, s: Step, links: dict[str, _Link], index: int, seq: int, overrides: tuple[Override, ...]
    ) -> Iterator[ev.Event]:
        request = f"r{index}"
        if s.uplink is not None and s.command is None:
            link = links[s.uplink]
            before = link.carrier
            self._apply_condition(link, s, s.target)
            if link.carrier != before:
                yield ev.CarrierChanged(s.uplink, link.carrier)
            # A carrier is the device's: both twins of a dual-stack uplink see it (loss, RTT and
            # jitter stay with the twin named, so a timeline can fail one family).
            device = self.policy.uplinks[s.uplink].interface
            twins = [n for n, u in self.policy.uplinks.items() if n != s.uplink and u.interface == device]
            for other in twins if s.carrier is not None else []:
                if links[other].carrier != link.carrier:
                    links[other].carrier = link.carrier
                    yield ev.CarrierChanged(other, link.carrier)
        for key, down in (("carrier_outage", True), ("carrier_restored", False)):
            name = getattr(s, key)
            if name is not None:
                for uname, u in self.policy.uplinks.items():
                    if u.operator == name:
                        links[uname].outage = down
        if s.plmn_outage is not None:
            self._plmn(s.plmn_outage, True, links)
        if s.plmn_restored is not None:
            self._plmn(s.plmn_restored, False, links)
        if s.command is not None:
            _, args = validate(command_request(s))  # checked when the timeline was loaded
            yield from to_events(self.policy, s.command, args, request, overrides=overrides)
        if s.clock is not None:
            self.wall_shift = s.wall_shift  # 0 unless given: a clock judged again is right again
            evidence = (f"wall clock shifted {s.wall_shift:+g}s",) if s.wall_shift else ()
            yield ev.ClockChanged(ev.ClockState(s.clock), s.bound, evidence, self.wall(s.at), tuple(s.disagreeing))
        if s.note is not None and s.command is None:
            self.records.append(stamped(note_record(s.note), self.wall(s.at), s.at))

    def _step(self, state: EngineState, event: ev.Event, t: float, links: dict[str, _Link], push: Any) -> EngineState:
        state, effects = step(state, event, self.policy, t)
        for e in effects:
            self._record(t, e, links, push)
        due = _canary_due(self.policy, state)
        if due is not None and not self.canary_probing:
            self.canary_probing = True
            push(first_tick(due[1].probe.interval, t), "canary", due[0])
        return state

    def _record(self, t: float, e: fx.Effect, links: dict[str, _Link], push: Any) -> None:
        record = effect_record(e)
        if record is not None:
            self.records.append(stamped(record, self.wall(t), t))
        match e:
            case fx.ActivateStandby():
                sb = self.timeline.world.get(e.uplink, UplinkWorld()).standby
                if sb.activation == "ok":
                    push(t + sb.delay, "engine", ev.StandbyResult(e.uplink, "activate", True))
                elif sb.activation == "fail":
                    push(t + sb.delay, "engine", ev.StandbyResult(e.uplink, "activate", False, "modem error"))
            case fx.DeactivateStandby():
                links[e.uplink].powered = False
                push(t, "engine", ev.StandbyResult(e.uplink, "deactivate", True))
            case fx.SwitchProfile():
                # Register (same SIM) answers once registered; a slot switch once the modem is back,
                # and it registers after that.
                modem = self.modems[e.uplink]
                spec = self.policy.uplinks[e.uplink].modem
                if spec is None:
                    return
                modem.epoch += 1
                modem.attached = None
                modem.profile = spec.profile(e.profile)
                links[e.uplink].modem_blocked = True
                w = modem.world
                done = t + (w.register_delay if e.how == "register" else w.slot_switch_delay)
                push(done, "engine", ev.ProfileSwitched(e.uplink, e.profile, True))
                push(done if e.how == "register" else done + w.register_delay, "attach", (e.uplink, modem.epoch))


def _sim_in_use(p: ProfileSpec) -> dict[str, Any]:
    """What a simulated modem on profile p says of its SIM (ModemState's slot, iccid, esim)."""
    if p.esim is not None:
        return {"slot": None, "iccid": p.esim, "esim": True}
    return {"slot": p.slot, "iccid": None, "esim": False}


def _canary_due(policy: Policy, state: EngineState) -> tuple[str, CanarySpec] | None:
    """The drilled uplink and its canary while a drill with one is CHECKING (as services/probes.py)."""
    run = state.drill
    spec = policy.drills.get(run.uplink) if run is not None else None
    if run is None or spec is None or spec.canary is None or run.phase is not DrillPhase.CHECKING:
        return None
    return run.uplink, spec.canary


def simulate(policy: Policy, timeline: Timeline, wall_epoch: float | None = None) -> list[dict[str, Any]]:
    sim = Simulation(policy, timeline) if wall_epoch is None else Simulation(policy, timeline, wall_epoch)
    return sim.run()
