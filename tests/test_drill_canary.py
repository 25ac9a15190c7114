"""A drill's canary: a drill-only class's probes through the backup (policy, kernel plan, engine, simulation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failoverd.ctl import render_drills, render_history
from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.drills import canary_routes
from failoverd.engine.drillstate import DrillPhase
from failoverd.engine.explain import explain
from failoverd.engine.records import effect_record
from failoverd.engine.state import EngineState, Health, initial_state
from failoverd.engine.step import step
from failoverd.errors import PolicyError
from failoverd.kernel import plan
from failoverd.observe.status import drill_rows
from failoverd.policy import parse_policy_text
from failoverd.policy.model import Policy
from failoverd.simulate import Simulation, Timeline

TEXT = """
site: canary
uplinks:
  - name: a
    interface: a0
    next_hop: 192.0.2.1
    probes:
      - {kind: icmp, target: 198.51.100.1, interval: 1s}
      - {kind: icmp, target: 198.51.100.2, interval: 1s}
  - name: b
    interface: b0
    next_hop: 192.0.2.5
    kind: cellular
    probes: [{kind: icmp, target: 198.51.100.1, interval: 1s}]
  - name: sat
    interface: sat0
    next_hop: 192.0.2.9
    kind: satellite
    metered: true
    admit: [critical]
    standby: {mode: cold, activate: {run: [/bin/true], timeout: 5s}, activation_time: 10s, release_after: 20s}
    probes: [{kind: icmp, target: 198.51.100.1, interval: 1s, timeout: 2s}]
classes:
  - name: critical
    match: [{dscp: [EF]}]
    path: [a, b, sat]
    preempt_delay: 5s
  - name: bulk
    path: [a, b]
drills:
  - uplink: sat
    every: 1h
    rounds: 3
    max_bytes: 100kB
    max_duration: 60s
    CANARY
"""
CANARY = "canary: {target: 203.0.113.10, kind: udp-echo, interval: 1s, timeout: 1s, rounds: 4}"


def policy(canary: str = CANARY) -> Policy:
    return parse_policy_text(TEXT.replace("CANARY", canary), "canary.yaml")


def errors(canary: str, text: str = TEXT) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy_text(text.replace("CANARY", canary), "canary.yaml")
    return [str(p) for p in info.value.problems]


# -- the policy ----------------------------------------------------------------------------------------


def test_a_canary_compiles_to_a_drill_only_table_and_mark_after_every_class() -> None:
    with_canary = policy()
    without = policy("")
    c = with_canary.drills["sat"].canary
    assert c is not None and without.drills["sat"].canary is None
    # Adding a canary moves no uplink's or class's table or mark.
    assert with_canary.uplinks == without.uplinks
    assert with_canary.classes == without.classes
    taken = {u.table for u in without.uplinks.values()} | {k.table for k in without.classes.values()}
    marks = {u.fwmark for u in without.uplinks.values()} | {k.fwmark for k in without.classes.values()}
    assert c.table not in taken and c.table == max(taken) + 1
    assert c.fwmark not in marks and c.fwmark & ~with_canary.ownership.fwmark_mask == 0
    assert (c.probe.kind, c.probe.target, c.probe.port, c.rounds) == ("udp-echo", "203.0.113.10", 7, 4)
    assert c.max_loss_percent == with_canary.drills["sat"].max_loss_percent  # the drill's, unless given
    assert c.key == "canary:udp-echo:203.0.113.10:7"
    assert c.key not in {p.key for p in with_canary.uplinks["sat"].probes}


def test_canary_defaults_come_from_the_drill() -> None:
    c = policy("canary: {target: 203.0.113.10, kind: icmp}").drills["sat"].canary
    assert c is not None
    assert (c.probe.port, c.rounds, c.probe.interval, c.probe.timeout) == (None, 3, 1.0, 1.0)


def test_canary_table_and_mark_collisions_are_located() -> None:
    # The class's own table and mark are given too: both collide with the canary's.
    text = TEXT.replace("    path: [a, b]\n", "    path: [a, b]\n    table: 7150\n    fwmark: 0x3000000\n")
    got = errors("canary: {target: 203.0.113.10, kind: icmp, table: 7150, fwmark: 0x3000000}", text)
    assert any(
        g.startswith("canary.yaml:38:55: drills.0.canary.table:")
        and 'the canary of drill "sat": table 7150 is already used by class "bulk"' in g
        for g in got
    ), got
    assert any('drills.0.canary.fwmark: the canary of drill "sat": fwmark 0x3000000 is already used' in g for g in got)


def test_bad_canaries_are_refused_with_the_reason() -> None:
    got = errors("canary: {target: 203.0.113.10, kind: tcp}")
    assert any("drills.0.canary.port:" in g and "a tcp canary needs the port" in g for g in got), got
    got = errors("canary: {target: 203.0.113.10, kind: icmp, port: 80}")
    assert any("an icmp canary takes no port" in g for g in got), got
    got = errors("canary: {target: 203.0.113.10, kind: icmp, interval: 1s, timeout: 2s}")
    assert any("drills.0.canary.timeout:" in g and "one canary probe is sent at a time" in g for g in got), got
    got = errors("canary: {target: '2001:db8::10', kind: icmp}")
    assert any("drills.0.canary.target:" in g and "is IPv6 but uplink" in g for g in got), got
    got = errors("canary: {target: 203.0.113.10, kind: icmp, rounds: 60}")
    assert any("drills.0.canary.rounds:" in g and "more than the drill's max_duration (60s)" in g for g in got), got
    got = errors("canary: {target: 203.0.113.10, kind: http}")
    assert any("drills.0.canary.kind" in g for g in got), got
    assert any(g.startswith("canary.yaml:36:42:") for g in got), got


# -- the kernel plan -----------------------------------------------------------------------------------


def test_the_canary_rule_follows_the_classes_and_its_table_is_unreachable_outside_a_drill() -> None:
    pol = policy()
    c = pol.drills["sat"].canary
    assert c is not None
    rules = sorted(plan.desired_rules(pol))
    canary_rules = [r for r in rules if r.table == c.table]
    assert {r.fwmark for r in canary_rules} == {c.fwmark}
    class_prios = [r.priority for r in rules if r.table in {k.table for k in pol.classes.values()}]
    assert all(r.priority > max(class_prios) for r in canary_rules)
    assert c.table in plan.owned_tables(pol)
    idle = plan.desired(pol, {}, "", canary_routes(pol, None))
    assert [r for r in idle.routes if r.table == c.table] == [plan.Route(c.table, 4, "unreachable")]
    drilling = plan.desired(pol, {}, "", {"sat": "sat"})
    via = [plan.Route(c.table, 4, "unicast", "192.0.2.9", "sat0")]
    assert [r for r in drilling.routes if r.table == c.table] == via
    # The canary's route is the only difference: no class table moves.
    assert {r for r in drilling.routes if r.table != c.table} == {r for r in idle.routes if r.table != c.table}


# -- the engine ----------------------------------------------------------------------------------------


class Drive:
    """Steps the engine through a drill of sat: terrestrial uplinks healthy, sat activated and answering."""

    def __init__(self, pol: Policy) -> None:
        self.policy = pol
        self.t = 0.0
        self.state: EngineState = initial_state(pol, 0.0)
        self.effects: list[fx.Effect] = []
        self.canary = pol.drills["sat"].canary
        self.feed(ev.Tick())

    def feed(self, event: ev.Event, dt: float = 0.0) -> tuple[fx.Effect, ...]:
        self.t += dt
        while self.state.wake_at is not None and self.state.wake_at <= self.t:
            self.state, effects = step(self.state, ev.Tick(), self.policy, self.state.wake_at)
            self.effects += effects
        self.state, effects = step(self.state, event, self.policy, self.t)
        self.effects += effects
        return effects

    def terrestrial(self, dt: float = 1.0) -> None:
        results = [ev.ProbeResult(u, p.key, True, 0.02) for u in ("a", "b") for p in self.policy.uplinks[u].probes]
        self.feed(ev.ProbeBatch(tuple(results)), dt)

    def start(self) -> None:
        for _ in range(4):
            self.terrestrial()
        self.feed(ev.RunDrill("r1", "sat", "test"), 0.1)
        assert self.phase() is DrillPhase.ACTIVATING
        self.feed(ev.StandbyResult("sat", "activate", True), 1.0)
        for _ in range(5):
            self.feed(ev.ProbeResult("sat", "icmp:198.51.100.1", True, 0.6), 1.0)
            if self.phase() is DrillPhase.CHECKING:
                return
        raise AssertionError(f"drill not CHECKING: {self.state.drill}")

    def phase(self) -> DrillPhase | None:
        return None if self.state.drill is None else self.state.drill.phase

    def sat_round(self, canary_ok: bool | None) -> None:
        results = [ev.ProbeResult("sat", "icmp:198.51.100.1", True, 0.6)]
        if canary_ok is not None and self.canary is not None:
            results.append(ev.ProbeResult("sat", self.canary.key, canary_ok, 0.65 if canary_ok else None))
        self.feed(ev.ProbeBatch(tuple(results)), 1.0)

    def of(self, kind: type) -> list[fx.Effect]:
        return [e for e in self.effects if isinstance(e, kind)]


def _verdict(d: Drive) -> fx.DrillChanged:
    ends = [e for e in d.of(fx.DrillChanged) if isinstance(e, fx.DrillChanged) and e.verdict is not None]
    assert len(ends) == 1, ends
    return ends[0]


def test_a_drill_routes_its_canary_via_the_backup_only_while_checking_and_passes_when_it_answers() -> None:
    d = Drive(policy())
    d.start()
    routed = d.of(fx.RouteCanary)
    assert routed == [
        fx.RouteCanary("sat", "sat", routed[0].cause)  # type: ignore[union-attr]
    ]
    assert canary_routes(d.policy, d.state.drill) == {"sat": "sat"}
    row = drill_rows(d.policy, d.state, d.t)[0]
    assert row["canary"]["route"] == "via sat" and row["canary"]["target"] == "203.0.113.10"
    shown = render_drills(drill_rows(d.policy, d.state, d.t), tty=False)
    assert f"canary udp-echo 203.0.113.10:7 (table {row['canary']['table']}" in shown and "via sat, 0 of 4" in shown
    lines = explain(d.policy, d.state, "critical")
    assert any("canary udp-echo to 203.0.113.10" in ln and "routed via sat" in ln for ln in lines), lines
    # The uplink's own rounds are done first: the drill waits for the canary's.
    for _ in range(4):
        d.sat_round(None)
    assert d.state.drill is not None and d.state.drill.phase is DrillPhase.CHECKING
    sat_targets = dict(d.state.uplinks["sat"].targets)
    for _ in range(4):
        d.sat_round(True)
    end = _verdict(d)
    assert end.verdict == "pass" and "203.0.113.10" in end.cause.text
    checks = {e.check: e for e in d.of(fx.DrillCheck) if isinstance(e, fx.DrillCheck)}
    assert checks["canary"].ok and checks["canary"].value == 0.0
    assert "rtt 650.0ms" in checks["canary"].cause.text
    off = d.of(fx.RouteCanary)[-1]
    assert isinstance(off, fx.RouteCanary) and off.via is None
    assert canary_routes(d.policy, d.state.drill) == {"sat": None}
    history = render_history([{"wall": 0, **r} for r in map(effect_record, d.of(fx.RouteCanary)) if r], tty=False)
    assert "sat canary -> via sat" in history and "sat canary -> unreachable" in history
    # Canary results are the drill's, never the uplink's health evidence.
    assert set(sat_targets) == {"icmp:198.51.100.1"}
    assert d.state.uplinks["a"].health is Health.UP


def test_a_canary_that_gets_no_answer_fails_the_drill_and_names_its_target() -> None:
    d = Drive(policy())
    d.start()
    for _ in range(4):
        d.sat_round(False)
    end = _verdict(d)
    assert end.verdict == "fail"
    assert end.cause.code == "drill-canary-failed"
    assert "203.0.113.10:7" in end.cause.text and "100.0%" in end.cause.text
    assert end.deactivated  # the drill switches off what it switched on, as any fail
    alarm = [e for e in d.of(fx.Alarm) if isinstance(e, fx.Alarm) and e.cause.code == "drill-failed"]
    assert alarm and "203.0.113.10" in alarm[0].cause.text
    assert [e for e in d.of(fx.SwitchClass) if isinstance(e, fx.SwitchClass) and e.to_uplink == "sat"] == []


def test_canary_losses_before_the_route_existed_do_not_count() -> None:
    d = Drive(policy())
    d.start()
    run = d.state.drill
    assert run is not None and d.canary is not None
    # A loss known at once (ENETUNREACH: sent before the kernel had the canary's route) is no evidence.
    d.feed(ev.ProbeResult("sat", d.canary.key, False, None, run.active_at), 0.0)
    assert d.state.drill is not None and d.state.drill.canary_results == 0


def test_without_canary_results_the_drill_fails_at_max_duration_saying_so() -> None:
    d = Drive(policy())
    d.start()
    for _ in range(60):
        d.sat_round(None)
        if d.state.drill is None:
            break
    end = _verdict(d)
    assert end.verdict == "fail" and end.cause.code == "drill-timeout"
    assert "canary to 203.0.113.10: 0 of 4" in end.cause.text


# -- the property: a canary moves no production class -------------------------------------------------

WITH = policy()
WITHOUT = replace(WITH, drills={})
CANARY_KEY = WITH.drills["sat"].canary.key if WITH.drills["sat"].canary else ""
PROBES = {name: [p.key for p in u.probes] for name, u in WITH.uplinks.items()}
events = st.one_of(
    *[
        st.sampled_from(list(PROBES)).flatmap(
            lambda u: st.builds(ev.ProbeResult, st.just(u), st.sampled_from(PROBES[u]), st.booleans(), st.just(0.05))
        )
    ]
    * 4,
    st.builds(ev.ProbeResult, st.just("sat"), st.just(CANARY_KEY), st.booleans(), st.just(0.6)),
    st.builds(ev.ProbeResult, st.just("sat"), st.just(CANARY_KEY), st.booleans(), st.just(0.6)),
    st.builds(ev.CarrierChanged, st.sampled_from(list(PROBES)), st.booleans()),
    st.builds(ev.StandbyResult, st.just("sat"), st.sampled_from(["activate", "deactivate"]), st.booleans()),
    st.builds(ev.RunDrill, st.just("r"), st.just("sat")),
    st.just(ev.Tick()),
)
# Terrestrial uplinks UP, a drill of sat asked for, the terminal up and answering: CHECKING, with the
# canary's table routed via sat, when the random part begins.
HEALTHY: list[tuple[float, ev.Event]] = [
    *[(1.0, ev.ProbeBatch(tuple(ev.ProbeResult(u, p, True, 0.02) for u in ("a", "b") for p in PROBES[u])))] * 3,
    (0.1, ev.RunDrill("r0", "sat")),
    (1.0, ev.StandbyResult("sat", "activate", True)),
    *[(1.0, ev.ProbeResult("sat", PROBES["sat"][0], True, 0.6))] * 3,
]
timelines = st.lists(st.tuples(st.floats(0, 4), events), min_size=1, max_size=100).map(lambda t: HEALTHY + t)


def _run(timeline: Sequence[tuple[float, ev.Event]], pol: Policy) -> list[tuple[EngineState, tuple[fx.Effect, ...]]]:
    t = 0.0
    state, effects = step(initial_state(pol, t), ev.Tick(), pol, t)
    out = [(state, effects)]
    for dt, event in timeline:
        while state.wake_at is not None and state.wake_at <= t + dt:
            state, effects = step(state, ev.Tick(), pol, state.wake_at)
            out.append((state, effects))
        t += dt
        state, effects = step(state, event, pol, t)
        out.append((state, effects))
    return out


def test_the_property_starts_from_a_checking_drill() -> None:
    steps = _run(HEALTHY, WITH)
    last = steps[-1][0]
    assert last.drill is not None and last.drill.phase is DrillPhase.CHECKING
    assert canary_routes(WITH, last.drill) == {"sat": "sat"}


def _production(effects: tuple[fx.Effect, ...]) -> bool:
    return any(
        (isinstance(e, fx.ActivateStandby) and e.cause.code == "standby-needed")
        or (isinstance(e, fx.SwitchClass) and e.to_uplink == "sat")
        or (isinstance(e, fx.DrillChanged) and e.verdict == "production")
        for e in effects
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timelines)
def test_a_drill_with_a_canary_never_moves_a_production_class(timeline: list[tuple[float, ev.Event]]) -> None:
    """Whatever the canary's probes say, every class moves (and every flow is flushed) as it would
    without the drill, until production itself needs the backup; and the canary's table is routed via
    the backup exactly while the drill checks it."""
    with_drill, without = _run(timeline, WITH), _run(timeline, WITHOUT)
    cutoff = min((s.now for s, e in with_drill + without if _production(e)), default=float("inf"))

    def moves(steps: list[tuple[EngineState, tuple[fx.Effect, ...]]]) -> list[tuple[float, list[fx.Effect]]]:
        out: list[tuple[float, list[fx.Effect]]] = []
        for s, effects in steps:
            moved: list[fx.Effect] = [
                e for e in effects if isinstance(e, fx.SwitchClass | fx.FlushConntrack | fx.WithdrawClass)
            ]
            if moved and s.now < cutoff:
                out.append((s.now, moved))
        return out

    assert moves(with_drill) == moves(without)
    routed: str | None = None
    for s, effects in with_drill:
        for e in effects:
            if isinstance(e, fx.RouteCanary):
                routed = e.via
        checking = s.drill is not None and s.drill.phase is DrillPhase.CHECKING
        assert canary_routes(WITH, s.drill) == {"sat": "sat" if checking else None}
        assert routed == ("sat" if checking else None), "a RouteCanary effect for every change of the canary's route"
        # The canary's results are never evidence about the uplink.
        assert CANARY_KEY not in s.uplinks["sat"].targets


# -- the simulation ------------------------------------------------------------------------------------


def _simulate(world_target_loss: float | None) -> list[dict[str, object]]:
    events: list[dict[str, object]] = [{"at": 5, "command": "drill-run", "uplink": "sat"}]
    if world_target_loss is not None:
        events.insert(0, {"at": 0, "uplink": "sat", "target": "203.0.113.10", "loss": world_target_loss})
    timeline = Timeline.model_validate(
        {"duration": 80, "world": {"sat": {"rtt_ms": 600, "standby": {"delay": 3}}}, "events": events}
    )
    return Simulation(policy(), timeline).run()


def test_simulate_sends_the_canary_through_the_drilled_uplink() -> None:
    records = _simulate(None)
    drills = [r for r in records if r["kind"] == "drill" and "verdict" in r]
    assert [r["verdict"] for r in drills] == ["pass"], drills
    checks = {r["check"]: r for r in records if r["kind"] == "drill-check"}
    assert checks["canary"]["ok"] and "rtt 600.0ms" in str(checks["canary"]["cause"])
    canary = [(r["route"], r["to"]) for r in records if r["kind"] == "canary"]
    assert canary == [("via", "sat"), ("unreachable", None)]


def test_simulate_a_target_that_does_not_answer_through_the_backup_fails_the_drill() -> None:
    records = _simulate(100.0)
    drills = [r for r in records if r["kind"] == "drill" and "verdict" in r]
    assert [r["verdict"] for r in drills] == ["fail"], drills
    assert drills[0]["cause"]["code"] == "drill-canary-failed"  # type: ignore[index]
    assert "203.0.113.10" in drills[0]["cause"]["text"]  # type: ignore[index]
