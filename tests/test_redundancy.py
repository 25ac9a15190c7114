"""Redundancy per class, the last-uplink and verification alarms, and what status and explain show of them."""

from __future__ import annotations

import pytest

from failoverd.ctl import render_status
from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.explain import explain
from failoverd.engine.redundancy import last_verified, redundancy
from failoverd.engine.state import EngineState, Health, Lifecycle, initial_state, mark_verified
from failoverd.engine.step import step
from failoverd.errors import PolicyError
from failoverd.observe.status import class_rows, redundancy_summary
from failoverd.policy import parse_policy_text

POLICY = parse_policy_text(
    """
site: ready
uplinks:
  - {name: a, interface: a0, next_hop: 192.0.2.1, health: {up: {successes: 1, hold_down: 0}}}
  - {name: b, interface: b0, next_hop: 192.0.2.5, health: {up: {successes: 1, hold_down: 0}},
     verify: {within: 100s, alarm: warning}}
  - name: sat
    interface: sat0
    next_hop: 192.0.2.9
    standby: {mode: cold, activate: {run: [/bin/true]}, activation_time: 30s, release_after: 50s}
    health: {up: {successes: 1, hold_down: 0}}
    probes: [{kind: icmp, target: 198.51.100.1, interval: 1s}]
    verify: {within: 1000s, alarm: critical}
classes:
  - {name: vital, match: [{dscp: [EF]}], path: [a, b, sat], redundancy: {alarm: critical}}
  - {name: rest, path: [a, b]}
""",
    "ready.yaml",
)


def _run(events: list[tuple[float, ev.Event]]) -> tuple[EngineState, list[tuple[float, fx.Effect]]]:
    state, effects = step(initial_state(POLICY, 0.0), ev.Tick(), POLICY, 0.0)
    out = [(0.0, e) for e in effects]
    for t, event in events:
        while state.wake_at is not None and state.wake_at <= t:
            at = state.wake_at
            state, effects = step(state, ev.Tick(), POLICY, at)
            out += [(at, e) for e in effects]
        state, effects = step(state, event, POLICY, t)
        out += [(t, e) for e in effects]
    return state, out


def _alarms(out: list[tuple[float, fx.Effect]], subject: str) -> list[tuple[float, str, str]]:
    return [(t, e.severity, e.cause.code) for t, e in out if isinstance(e, fx.Alarm) and e.subject == subject]


def test_no_alarm_when_all_is_well() -> None:
    state, out = _run([(0.5, ev.Tick())])
    assert not _alarms(out, "vital")
    r = redundancy(POLICY.classes["vital"], POLICY, state)
    assert r.judged
    assert r.usable == ("a", "b")  # carrier-only uplinks: UP at once
    assert r.unproven == ("sat",)  # never seen working


def test_last_uplink_alarm_raised_and_cleared_with_causes() -> None:
    state, out = _run([(5.0, ev.CarrierChanged("a", False))])
    assert _alarms(out, "vital") == [(5.0, "critical", "redundancy-lost")]
    assert state.classes["vital"].exposed
    cause = next(e.cause for t, e in out if isinstance(e, fx.Alarm) and e.cause.code == "redundancy-lost")
    assert "last usable uplink b" in cause.text
    assert dict(cause.evidence)["usable"] == "b"
    assert not _alarms(out, "rest")  # rest does not ask
    state, out = _run([(5.0, ev.CarrierChanged("a", False)), (9.0, ev.CarrierChanged("a", True))])
    assert _alarms(out, "vital")[-1][2] == "redundancy-restored"
    assert not state.classes["vital"].exposed
    # Moving the class keeps the alarm state: no second alarm when b is lost too.
    state, out = _run([(5.0, ev.CarrierChanged("a", False)), (6.0, ev.CarrierChanged("b", False))])
    assert [a[2] for a in _alarms(out, "vital")].count("redundancy-lost") == 1


def test_verified_at_follows_up_and_drills_can_mark_it() -> None:
    state, _ = _run([(7.0, ev.CarrierChanged("b", False))])
    b = state.uplinks["b"]
    assert b.health is Health.DOWN
    assert b.verified_at is not None
    assert 0.0 <= b.verified_at <= 7.0  # the moment it left UP
    assert last_verified(state.uplinks["a"], state.now) == state.now  # UP: verified now
    sat = state.uplinks["sat"]
    assert sat.lifecycle is Lifecycle.STANDBY
    assert sat.verified_at is None
    marked = mark_verified(sat, 20.0)
    assert marked.verified_at == 20.0
    assert mark_verified(marked, 10.0).verified_at == 20.0  # never moves back


def test_stale_verification_alarms_once_and_clears_when_seen_working() -> None:
    state, out = _run(
        [
            (2.0, ev.CarrierChanged("b", False)),  # last seen working then
            (150.0, ev.Tick()),
            (160.0, ev.CarrierChanged("b", True)),
        ]
    )
    b_alarms = _alarms(out, "b")
    stale = [x for x in b_alarms if x[2] == "unverified"]
    assert len(stale) == 1
    assert stale[0][1] == "warning"
    assert stale[0][0] == 102.0  # raised at the deadline by the engine's own timer
    assert b_alarms[-1][2] == "verified"
    assert not state.uplinks["b"].verify_stale
    # The never-activated satellite: never seen working, alarmed verify.within after watching began.
    sat_state, sat_out = _run([(1200.0, ev.Tick())])
    sat_alarms = [x for x in _alarms(sat_out, "sat") if x[2] == "unverified"]
    assert sat_alarms == [(1000.0, "critical", "unverified")]
    assert sat_state.uplinks["sat"].verify_stale


def test_status_explain_and_mqtt_show_redundancy() -> None:
    state, _ = _run([(5.0, ev.CarrierChanged("a", False))])
    rows = {r["name"]: r for r in class_rows(POLICY, state)}
    assert rows["vital"]["redundancy"]["usable"] == 1
    assert rows["vital"]["redundancy"]["alarm"] is True
    assert redundancy_summary(POLICY, state)["vital"] == {"usable": 1, "standby": 0, "alarm": True}
    chain = explain(POLICY, state, "vital")
    assert any(line.startswith("redundancy: 1 usable (b), 0 standby, 1 unproven (sat)") for line in chain)
    assert any("critical alarm on the last uplink (raised)" in line for line in chain)
    st = {
        "site": "ready",
        "policy": "ready.yaml",
        "pid": 1,
        "uptime_s": 5,
        "clock": {"state": "sane"},
        "uplinks": [],
        "classes": list(rows.values()),
        "overrides": [],
    }
    text = render_status(st, tty=False)
    assert "SPARE" in text
    assert "  1+0!" in text


def test_a_backup_that_fails_its_drill_is_not_counted_as_known_good() -> None:
    """Before, the satellite coming UP for a drill that then failed on loss refreshed its proof of
    working: redundancy listed the broken backup as standby known good."""
    from pathlib import Path

    from failoverd.policy import load_policy
    from failoverd.simulate import Simulation, Timeline

    policy = load_policy(Path(__file__).resolve().parent.parent / "policies" / "emergency.yaml")
    outcome = {}
    for name, loss in (("broken", 50), ("good", 0)):
        world = {"rtt_ms": 600, "loss": loss, "standby": {"activation": "ok", "delay": 20}}
        timeline = Timeline.model_validate(
            {
                "duration": 700,
                "wall_start": "2026-01-04T02:20:00Z",
                "world": {"sat": world},
                "events": [{"at": 0, "clock": "sane"}],
            }
        )
        sim = Simulation(policy, timeline)
        records = sim.run()
        verdicts = [r.get("verdict") for r in records if r.get("kind") == "drill" and r.get("verdict")]
        outcome[name] = (
            verdicts,
            sim.state.uplinks["sat"].verified_at,
            redundancy(policy.classes["dispatch"], policy, sim.state),
        )
    broken_verdicts, broken_proof, broken_red = outcome["broken"]
    assert broken_verdicts == ["fail"] and broken_proof is None
    assert "sat" not in broken_red.standby and "sat" in broken_red.unproven
    good_verdicts, good_proof, good_red = outcome["good"]
    assert good_verdicts == ["pass"] and good_proof is not None and "sat" in good_red.standby


TWO_COLD = """
site: ready
uplinks:
  - {name: a, interface: a0, next_hop: 192.0.2.1, health: {up: {successes: 1, hold_down: 0}}}
  - {name: b, interface: b0, next_hop: 192.0.2.5, health: {up: {successes: 1, hold_down: 0}}}
  - name: sat
    interface: sat0
    next_hop: 192.0.2.9
    standby: {mode: cold, activate: {run: [/bin/true]}, activation_time: 30s}
  - name: sat2
    interface: sat1
    next_hop: 192.0.2.13
    standby: {mode: cold, activate: {run: [/bin/true]}, activation_time: 30s, prewarm: PREWARM}
classes:
  - {name: vital, match: [{dscp: [EF]}], path: [a, b, sat, sat2]}
  - {name: rest, path: [a, b]}
"""


def _activations(policy_text: str) -> list[tuple[float, str, str]]:
    policy = parse_policy_text(policy_text, "two-cold.yaml")
    state, effects = step(initial_state(policy, 0.0), ev.Tick(), policy, 0.0)
    out = [(0.0, e) for e in effects]
    for t, event in [(5.0, ev.CarrierChanged("a", False)), (6.0, ev.Tick())]:
        state, effects = step(state, event, policy, t)
        out += [(t, e) for e in effects]
    return [(t, e.uplink, e.cause.code) for t, e in out if isinstance(e, fx.ActivateStandby)]


def test_an_uplink_that_prewarms_itself_is_warmed_when_a_class_it_serves_is_down_to_one() -> None:
    # sat2 is not the first cold uplink of vital's path, and vital asks for no pre-warm: sat2 asks.
    assert _activations(TWO_COLD.replace("PREWARM", "true")) == [(5.0, "sat2", "prewarm")]
    assert _activations(TWO_COLD.replace("PREWARM", "false")) == []
    # A class's own pre-warm wakes the first cold uplink of its path; both ask: both are woken.
    both = TWO_COLD.replace("PREWARM", "true").replace(
        "path: [a, b, sat, sat2]}", "path: [a, b, sat, sat2],\n     redundancy: {prewarm: true}}"
    )
    assert sorted(_activations(both)) == [(5.0, "sat", "prewarm"), (5.0, "sat2", "prewarm")]


def test_prewarm_on_an_uplink_that_serves_no_class_or_is_hot_is_refused() -> None:
    unserved = TWO_COLD.replace("PREWARM", "true").replace("path: [a, b, sat, sat2]", "path: [a, b, sat]")
    with pytest.raises(PolicyError, match=r'two-cold.yaml:\d+:\d+: .*uplink "sat2": prewarm, but no class'):
        parse_policy_text(unserved, "two-cold.yaml")
    hot = TWO_COLD.replace("PREWARM", "false").replace(
        "- {name: b, interface: b0, next_hop: 192.0.2.5,",
        "- {name: b, interface: b0, next_hop: 192.0.2.5, standby: {prewarm: true},",
    )
    with pytest.raises(PolicyError, match=r'uplink "b": prewarm is for cold standby'):
        parse_policy_text(hot, "two-cold.yaml")
