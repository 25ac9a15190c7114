"""Alarms: raised and cleared by the engine with stable ids, deduplicated, acknowledged by operators."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.state import EngineState, initial_state
from failoverd.engine.step import step
from failoverd.errors import PolicyError
from failoverd.policy import parse_policy_text
from failoverd.policy.model import Policy

TEXT = """
site: alarms
uplinks:
  - {name: a, interface: a0, next_hop: 192.0.2.1, health: {up: {successes: 1, hold_down: 0}}}
  - {name: b, interface: b0, next_hop: 192.0.2.5, health: {up: {successes: 1, hold_down: 0}}}
classes:
  - {name: vital, match: [{dscp: [EF]}], path: [a, b], preempt_delay: 0s, redundancy: {alarm: critical}}
  - {name: rest, path: [a]}
"""
POLICY = parse_policy_text(TEXT, "alarms.yaml")


def _run(
    events: list[tuple[float, ev.Event]], policy: Policy = POLICY, state: EngineState | None = None
) -> tuple[EngineState, list[fx.Alarm]]:
    if state is None:
        state, _ = step(initial_state(policy, 0.0), ev.Tick(), policy, 0.0)
    alarms: list[fx.Alarm] = []
    for t, event in events:
        state, effects = step(state, event, policy, t)
        alarms += [e for e in effects if isinstance(e, fx.Alarm)]
        reply = next((e for e in effects if isinstance(e, fx.CommandReply)), None)
        if reply is not None:
            alarms.append(fx.Alarm("info", "reply", fx.Cause("ok" if reply.ok else "refused", reply.text)))
    return state, alarms


def _log(alarms: list[fx.Alarm]) -> list[tuple[str, str, str]]:
    return [(a.state, a.id, a.severity) for a in alarms if a.id]


def test_a_fiber_cut_raises_each_condition_once_and_the_repair_clears_them() -> None:
    state, alarms = _run([(5.0, ev.CarrierChanged("a", False)), (6.0, ev.CarrierChanged("a", False)), (7.0, ev.Tick())])
    assert sorted(_log(alarms)) == [  # each once, though the carrier was reported lost twice
        ("raised", "class-backup:vital", "warning"),
        ("raised", "class-down:rest", "critical"),
        ("raised", "redundancy:vital", "critical"),
        ("raised", "uplink-down:a", "warning"),
    ]
    by_id = {a.id: a for a in alarms}
    assert by_id["uplink-down:a"].cause.code == "carrier-loss"  # the cause of the condition, as the uplink has it
    assert by_id["class-down:rest"].cause.code == "all-down"
    assert set(state.alarms) == set(by_id)
    state, alarms = _run([(9.0, ev.CarrierChanged("a", True)), (9.5, ev.Tick())], state=state)
    assert sorted(_log(alarms)) == sorted(
        [
            ("cleared", "uplink-down:a", "warning"),  # with the severity it had (as Alertmanager resolves)
            ("cleared", "class-backup:vital", "warning"),
            ("cleared", "class-down:rest", "critical"),
            ("cleared", "redundancy:vital", "critical"),
        ]
    )
    assert not state.alarms


def test_an_acknowledgement_marks_the_alarm_without_clearing_it_and_is_refused_with_a_reason() -> None:
    state, _ = _run([(5.0, ev.CarrierChanged("a", False))])
    state, alarms = _run(
        [
            (6.0, ev.AckAlarm("r1", "uplink-down:a", "splice crew on site", "op/alice")),
            (7.0, ev.AckAlarm("r2", "uplink-down:b", "typo", "op/alice")),
            (8.0, ev.AckAlarm("r3", "class-down:rest", "  ", "op/alice")),
        ],
        state=state,
    )
    assert ("acked", "uplink-down:a", "warning") in _log(alarms)
    acked = next(a for a in alarms if a.state == "acked")
    assert acked.by == "op/alice" and "splice crew on site" in acked.cause.text
    a = state.alarms["uplink-down:a"]
    assert (a.acked_by, a.ack_reason, a.acked_at) == ("op/alice", "splice crew on site", 6.0)
    replies = [x.cause for x in alarms if x.subject == "reply"]
    assert replies[0].code == "ok"
    assert replies[1].code == "refused" and 'no active alarm "uplink-down:b"' in replies[1].text
    assert "uplink-down:a" in replies[1].text  # the refusal lists what is active
    assert replies[2].code == "refused" and "needs a reason" in replies[2].text
    # Acknowledged, the condition still holds; when it ends the alarm clears as any other.
    state, alarms = _run([(9.0, ev.CarrierChanged("a", True))], state=state)
    assert ("cleared", "uplink-down:a", "warning") in _log(alarms)


def test_alarms_of_what_leaves_the_policy_are_cleared_on_reload() -> None:
    state, _ = _run([(5.0, ev.CarrierChanged("b", False))])
    assert "uplink-down:b" in state.alarms
    smaller = parse_policy_text(
        TEXT.replace(
            "  - {name: b, interface: b0, next_hop: 192.0.2.5, health: {up: {successes: 1, hold_down: 0}}}\n", ""
        ).replace("path: [a, b]", "path: [a]"),
        "alarms.yaml",
    )
    state, effects = step(state, ev.PolicyReloaded(), smaller, 6.0)
    cleared = [e for e in effects if isinstance(e, fx.Alarm) and e.state == "cleared"]
    assert [(e.id, e.cause.code) for e in cleared] == [("uplink-down:b", "policy-reload")]
    assert "uplink-down:b" not in state.alarms


def test_notices_have_no_id_and_leave_no_active_alarm() -> None:
    state, alarms = _run(
        [
            (1.0, ev.DrainUplink("r1", "b", "maintenance", 5.0, False, "op")),
            (7.0, ev.Tick()),
        ]
    )
    notices = [a for a in alarms if a.state == "notice" and a.subject != "reply"]
    assert [n.cause.code for n in notices] == ["override-expired"]
    assert notices[0].id == ""
    assert not any(a.startswith("o") for a in state.alarms)


ESCALATING = (
    TEXT
    + """
alarms:
  notifiers:
    - {name: noc, kind: webhook, url: "http://198.51.100.7/alerts"}
    - {name: oncall, kind: exec, run: [/bin/true]}
    - {name: duty, kind: journal}
  route:
    - {severity: [critical], notify: [noc]}
    - {kind: [uplink-down], notify: [duty]}
  escalation:
    - {after: 10m, notify: [oncall]}
    - {after: 30m, notify: [duty]}
  repeat: 15m
"""
)


def _until(state: EngineState, policy: Policy, end: float) -> tuple[EngineState, list[fx.Alarm]]:
    """Tick at each wake-up the engine asks for, as the daemon's loop does, until `end`."""
    out: list[fx.Alarm] = []
    while state.wake_at is not None and state.wake_at <= end:
        state, effects = step(state, ev.Tick(), policy, state.wake_at)
        out += [e for e in effects if isinstance(e, fx.Alarm)]
    return state, out


def test_an_unacknowledged_alarm_escalates_step_by_step_and_repeats_until_acknowledged() -> None:
    policy = parse_policy_text(ESCALATING, "alarms.yaml")
    state, _ = _run([(100.0, ev.CarrierChanged("b", False))], policy=policy)  # b: a backup, nothing moves
    assert set(state.alarms) == {"uplink-down:b", "redundancy:vital"}
    state, alarms = _until(state, policy, 100.0 + 3600)
    down = [(a.state, a.level) for a in alarms if a.id == "uplink-down:b"]
    # 10 min: step 1; 25 min: repeated (15 min after step 1); 30 min: step 2; then every 15 min.
    assert down == [("escalated", 1), ("repeated", 1), ("escalated", 2), ("repeated", 2), ("repeated", 2)]
    assert state.alarms["uplink-down:b"].level == 2
    step1 = next(a for a in alarms if a.id == "uplink-down:b" and a.state == "escalated")
    assert "to oncall" in step1.cause.text and dict(step1.cause.evidence)["level"] == "1"


def test_escalation_fires_when_due_whatever_the_steps_between_and_only_then_looks_at_the_alarms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine_step = importlib.import_module("failoverd.engine.step")  # the module, not the function

    policy = parse_policy_text(ESCALATING, "alarms.yaml")
    state, _ = _run([(100.0, ev.CarrierChanged("b", False))], policy=policy)
    assert state.notify_at == 100.0 + 600 and state.wake_at is not None and state.wake_at <= state.notify_at
    walks: list[int] = []  # the steps that looked for due notifications
    first = engine_step.first_notification
    monkeypatch.setattr(engine_step, "first_notification", lambda alarms, spec: walks.append(1) or first(alarms, spec))
    # Steps every 7 s that change no alarm (the daemon steps at every probe round, not at wake-ups).
    escalated: list[tuple[float, str]] = []
    t = 100.0
    while t < 100.0 + 700:
        t += 7.0
        state, effects = step(state, ev.Tick(), policy, t)
        escalated += [(t, a.id) for a in effects if isinstance(a, fx.Alarm) and a.state == "escalated"]
        if t < 700.0:
            assert not walks, f"alarms walked at {t}, before anything was due"
    # At the first step at or after 10 min, both alarms (noc and duty were told) take step 1, not before.
    first_due = 100.0 + 7 * 86  # 702: the first step at or after 700
    assert sorted(escalated) == [(first_due, "redundancy:vital"), (first_due, "uplink-down:b")]
    assert len(walks) == 1 and state.notify_at == first_due + 15 * 60  # next: repeated 15 min after step 1
    # An acknowledgement moves it: only the other alarm is left to be repeated.
    state, _ = step(state, ev.AckAlarm("r", "uplink-down:b", "on it", "op"), policy, t + 1)
    assert state.alarms["uplink-down:b"].acked_by == "op" and state.notify_at == first_due + 15 * 60
    state, alarms = _until(state, policy, first_due + 15 * 60)
    assert [(a.id, a.state) for a in alarms] == [("redundancy:vital", "repeated")]


_alarm_events = st.one_of(
    st.builds(ev.CarrierChanged, st.sampled_from(["a", "b"]), st.booleans()),
    st.builds(
        ev.AckAlarm,
        st.just("r"),
        st.sampled_from(["uplink-down:a", "uplink-down:b", "redundancy:vital", "class-down:vital"]),
        st.just("on it"),
        st.just("op"),
    ),
    st.just(ev.Tick()),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 1200.0), _alarm_events), max_size=30))
def test_the_notification_time_kept_in_the_state_is_the_one_the_alarms_give(
    timeline: list[tuple[float, ev.Event]],
) -> None:
    """A step skips the alarms when notify_at is not due: that is only sound if notify_at is always
    exactly when the first of them escalates or repeats, and never already past."""
    from failoverd.engine.alarms import first_notification

    policy = parse_policy_text(ESCALATING, "alarms.yaml")
    state, _ = step(initial_state(policy, 0.0), ev.Tick(), policy, 0.0)
    t = 0.0
    for gap, event in timeline:
        t += gap
        state, _ = step(state, event, policy, t)
        assert state.notify_at == first_notification(state.alarms.values(), policy.alarms)
        assert state.notify_at is None or state.notify_at > t


def test_an_acknowledged_alarm_neither_escalates_nor_repeats() -> None:
    policy = parse_policy_text(ESCALATING, "alarms.yaml")
    state, _ = _run(
        [(100.0, ev.CarrierChanged("b", False)), (200.0, ev.AckAlarm("r", "uplink-down:b", "on it", "op"))],
        policy=policy,
    )
    state, alarms = _until(state, policy, 100.0 + 7200)
    assert not [a for a in alarms if a.id == "uplink-down:b"]
    assert [a.state for a in alarms if a.id == "redundancy:vital"][:2] == ["escalated", "repeated"]  # not acked


def test_notifier_names_and_kinds_are_checked_with_their_place_in_the_file() -> None:
    bad = ESCALATING.replace("notify: [duty]", "notify: [dutty]").replace('url: "http://198.51.100.7/alerts"', "")
    with pytest.raises(PolicyError) as info:
        parse_policy_text(bad, "alarms.yaml")
    text = str(info.value)
    assert 'notifier "noc": a webhook needs url' in text
    assert 'unknown notifier "dutty" (notifiers: noc, oncall, duty)' in text
    assert "alarms.yaml:" in text


def test_a_route_names_the_kinds_the_engine_raises_and_no_other() -> None:
    from failoverd.engine.alarms import ALARM_KINDS
    from failoverd.policy.model import ALARM_KIND_NAMES

    # The policy owns the names (a route is checked against them); the engine keys its table by them.
    assert tuple(ALARM_KINDS) == ALARM_KIND_NAMES
    with pytest.raises(PolicyError) as info:
        parse_policy_text(ESCALATING.replace("kind: [uplink-down]", "kind: [uplink-dwn]"), "alarms.yaml")
    assert f'unknown alarm kind "uplink-dwn" ({", ".join(ALARM_KIND_NAMES)})' in str(info.value)


def test_the_history_record_of_an_escalation_names_its_level() -> None:
    from failoverd.engine.records import effect_record

    policy = parse_policy_text(ESCALATING, "alarms.yaml")
    state, _ = _run([(100.0, ev.CarrierChanged("b", False))], policy=policy)
    _, alarms = _until(state, policy, 100.0 + 600)
    record = effect_record(next(a for a in alarms if a.state == "escalated"))
    assert record is not None and record["level"] == 1 and record["state"] == "escalated"


def test_an_alarm_active_before_a_restart_resumes_with_its_age_and_acknowledgement(tmp_path: Path) -> None:
    from failoverd.engine.state import restored_state
    from failoverd.statedir import StateDir, load_alarms, save_alarms

    # The last run: b down, acknowledged; saved as the daemon saves it, read back by the next run.
    state, _ = _run([(100.0, ev.CarrierChanged("b", False)), (101.0, ev.AckAlarm("r", "uplink-down:b", "crew", "op"))])
    saved = StateDir.create(tmp_path)
    save_alarms(saved, state.alarms, mono=150.0, wall=1_790_000_150.0)
    carried, note = load_alarms(saved, mono=160.0, wall=1_790_000_160.0)  # same boot: its instants hold
    assert not note and carried["uplink-down:b"].acked_by == "op" and carried["uplink-down:b"].raised == 100.0
    # The next run sees b down again: the alarm resumes (no one is told again), acknowledged, 60 s old.
    fresh = restored_state(POLICY, 160.0, {}, carried=carried)
    state, alarms = _run([(161.0, ev.Tick()), (165.0, ev.CarrierChanged("b", False))], state=fresh)
    assert [(a.state, a.by) for a in alarms if a.id == "uplink-down:b"] == [("resumed", "op")]
    a = state.alarms["uplink-down:b"]
    assert (a.raised, a.acked_by) == (100.0, "op")
    # A carried alarm whose condition ended while the daemon was down is forgotten, not raised.
    assert "redundancy:vital" in carried
    state, alarms = _run([(165.0 + 200, ev.CarrierChanged("b", True))], state=state)
    assert "redundancy:vital" not in state.carried
    assert not any(a.state == "resumed" and a.id == "redundancy:vital" for a in alarms)
