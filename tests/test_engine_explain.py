"""`explain`: the chain of evidence the engine gives for a class, after real steps through real events."""

from __future__ import annotations

from pathlib import Path

import pytest

from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.explain import UnknownClass, explain
from failoverd.engine.state import EngineState, initial_state
from failoverd.engine.step import step
from failoverd.policy import load_policy, parse_policy_text

LAB = load_policy(Path(__file__).resolve().parent.parent / "policies" / "lab.yaml")
HOT = ("fiber", "mobile-a", "mobile-b")


def answers(names: tuple[str, ...] = HOT) -> ev.ProbeBatch:
    return ev.ProbeBatch(tuple(ev.ProbeResult(n, p.key, True, 0.02) for n in names for p in LAB.uplinks[n].probes))


def running(now: float = 0.1) -> EngineState:
    state, _ = step(initial_state(LAB, 0.0), answers(), LAB, now)
    return state


def chain(state: EngineState, cls: str) -> list[str]:
    return explain(LAB, state, cls)


def test_at_start_the_class_waits_for_evidence_on_its_primary() -> None:
    lines = chain(initial_state(LAB, 0.0), "critical")
    assert lines[0] == "class critical is pending since 0.0s ago: start: failoverd started; no evidence yet"
    assert lines[1] == "path: fiber > mobile-a > mobile-b > sat; revertive after 10s"
    assert "  fiber: UNKNOWN since 0.0s — start: failoverd started; no evidence yet" in lines
    assert "  sat: STANDBY since 0.0s — cold-standby: cold standby, off until a class needs it" in lines
    assert lines[-2:] == [
        "now the first usable uplink is pending: pending: waiting for first evidence on fiber",
        "waiting: pending: waiting for first evidence on fiber",
    ]


def test_a_fiber_carrier_loss_is_the_evidence_for_the_move() -> None:
    state, _ = step(running(), ev.CarrierChanged("fiber", False), LAB, 10.0)
    state, _ = step(state, ev.Tick(), LAB, 12.5)
    lines = chain(state, "critical")
    moved = "path: mobile-a is the first usable uplink (#2 of 4 in the path); skipped fiber down"
    assert lines[:3] == [
        f"class critical is via mobile-a since 2.5s ago: {moved}",
        "  evidence skipped: fiber down",
        "path: fiber > mobile-a > mobile-b > sat; revertive after 10s",
    ]
    assert lines[3] == "  fiber: DOWN since 2.5s — carrier-loss: carrier lost on fiber0"
    assert lines[4] == "    probe udp-echo:198.19.0.1:7: ok, 0 losses / 1 successes in a row"
    assert lines[-1] == f"now the first usable uplink is mobile-a: {moved}"


def test_silent_targets_show_as_failed_probes() -> None:
    state = running()
    lost = ev.ProbeBatch(tuple(ev.ProbeResult("fiber", p.key, False) for p in LAB.uplinks["fiber"].probes))
    for k in range(3):
        state, _ = step(state, lost, LAB, 0.2 + 0.05 * k)
    lines = chain(state, "bulk")
    assert "    probe udp-echo:198.19.0.2:7: FAILED (3 consecutive losses), 3 losses / 0 successes in a row" in lines
    assert any(line.startswith("  fiber: DOWN since 0.0s — probe-loss: 3 of 3 probe targets failed") for line in lines)


def test_a_repaired_fiber_waits_out_the_preempt_delay() -> None:
    state, _ = step(running(), ev.CarrierChanged("fiber", False), LAB, 10.0)
    state, _ = step(state, ev.CarrierChanged("fiber", True), LAB, 20.0)
    t = 20.0
    for _ in range(40):  # hold-down 3 s and 10 fresh successes: fiber is UP again at t=23
        t = round(t + 0.1, 1)
        state, _ = step(state, answers(), LAB, t)
    lines = chain(state, "critical")
    assert "  fiber: UP since 1.0s — recovered: clean for 3s (hold-down 3s) with 90 probe successes" in lines
    assert lines[-2:] == [
        "now the first usable uplink is fiber: path: fiber is the first usable uplink (#1 of 4 in the path)",
        "failback to fiber in 9.0s (preempt delay)",
    ]
    state, _ = step(state, ev.Tick(), LAB, t + 9.0)
    lines = chain(state, "critical")
    assert lines[0].startswith("class critical is via fiber since 0.0s ago: preempt: fiber stable for 10.0s")
    assert not any(line.startswith(("failback", "waiting")) for line in lines)


def test_an_override_and_a_drain_are_named() -> None:
    state, effects = step(running(), ev.ForceClass("r1", "critical", "mobile-b", "drill", 600.0, by="ops"), LAB, 1.0)
    assert [e.text for e in effects if isinstance(e, fx.CommandReply)] == [
        "override o1: class critical -> mobile-b for 600s"
    ]
    state, _ = step(state, ev.DrainUplink("r2", "mobile-a", "maintenance", 600.0, by="ops"), LAB, 101.0)
    lines = chain(state, "critical")
    assert lines[:3] == [
        "class critical is via mobile-b since 100.0s ago: override: operator override o1: 'drill' by ops",
        "  evidence override: o1",
        "override o1 (class critical -> mobile-b: 'drill' by ops), 500s left",
    ]
    assert any(line.startswith("  mobile-a: UP [drained] since") for line in lines)
    assert not any("[drained]" in line for line in chain(state, "bulk") if line.startswith("  fiber"))


def test_damping_and_admission_are_flagged() -> None:
    policy = parse_policy_text(
        """
site: flags
uplinks:
  - {name: a, interface: a0, next_hop: 192.0.2.1, health: {up: {hold_down: 0}}}
  - {name: b, interface: b0, next_hop: 192.0.2.5, metered: true, admit: [other]}
classes:
  - {name: other, match: [{dscp: [EF]}], path: [a, b]}
  - {name: main, path: [a, b], when_all_down: blackhole}
""",
        "flags.yaml",
    )
    state, _ = step(initial_state(policy, 0.0), ev.Tick(), policy, 0.0)
    for k in range(3):  # three falls from UP: the penalty passes suppress (2000)
        state, _ = step(state, ev.CarrierChanged("a", False), policy, 1.0 + k)
        state, _ = step(state, ev.CarrierChanged("a", True), policy, 1.5 + k)
    lines = explain(policy, state, "main")
    a_line = next(line for line in lines if line.startswith("  a: "))
    assert a_line.startswith(f"  a: UP [damped, penalty {state.uplinks['a'].penalty:.0f}] since")
    assert state.uplinks["a"].penalty > 2000
    b_line = next(line for line in lines if line.startswith("  b: "))
    assert b_line.startswith("  b: UP [does not admit this class] since")
    assert lines[0].startswith("class main is blackhole since")


def test_an_unknown_class_is_refused_with_the_classes_there_are() -> None:
    with pytest.raises(UnknownClass) as info:
        explain(LAB, running(), "voice")
    assert str(info.value) == 'unknown class "voice" (classes: critical, bulk)'
