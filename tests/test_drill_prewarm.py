"""Drills and pre-warm together: a drill never switches off a backup that pre-warm wants, it hands it over."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seeded import seeded_run
from test_drill_properties import DRILLED, run, timelines, verdicts

from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.state import Lifecycle
from failoverd.policy import parse_policy_text
from failoverd.policy.model import Policy, RedundancySpec
from failoverd.simulate import Simulation, Timeline

# The property tests' policy (a, b hot; the satellite cold, drilled) with pre-warm for class critical:
# down to one of a and b, it wakes the satellite.
PREWARMED = replace(
    DRILLED,
    classes={
        **DRILLED.classes,
        "critical": replace(DRILLED.classes["critical"], redundancy=RedundancySpec(prewarm=True)),
    },
)


# ... or the satellite asks it for itself (standby.prewarm): warmed for any class it serves.
SELF_PREWARMED = replace(
    DRILLED,
    uplinks={
        **DRILLED.uplinks,
        "sat": replace(DRILLED.uplinks["sat"], standby=replace(DRILLED.uplinks["sat"].standby, prewarm=True)),
    },
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timelines, st.sampled_from([PREWARMED, SELF_PREWARMED]))
def test_a_drill_never_switches_off_a_prewarmed_uplink_and_hands_it_over(
    timeline: list[tuple[float, ev.Event]], policy: Policy
) -> None:
    steps = run(timeline, policy)
    verdicts(steps)
    for before, event, after, effects in steps:
        for e in effects:
            if isinstance(e, fx.DeactivateStandby) and e.cause.code.startswith("drill"):
                assert e.uplink not in after.prewarm, f"the drill switched off pre-warmed {e.uplink} on {event}"
                assert e.uplink not in before.prewarm, f"the drill switched off pre-warmed {e.uplink} on {event}"
        if after.drill is not None:
            # Pre-warm wants nothing a drill runs on: it would have been handed over.
            assert after.drill.uplink not in after.prewarm, f"drill of pre-warmed {after.drill.uplink} on {event}"
        drilled = before.drill.uplink if before.drill is not None else None
        if drilled is not None and drilled in after.prewarm:
            # Pre-warm of a drilled uplink: production takes it as it is, the drill lets nothing go.
            ends = [e for e in effects if isinstance(e, fx.DrillChanged) and e.verdict is not None]
            assert [(e.verdict, e.deactivated) for e in ends] == [("production", False)], (event, ends)
            assert not any(isinstance(e, fx.DeactivateStandby) for e in effects)
            assert after.uplinks[drilled].lifecycle in (Lifecycle.ACTIVATING, Lifecycle.ACTIVE)


def test_prewarm_hands_the_drilled_uplink_over_in_some_generated_examples() -> None:
    """The property above is not vacuous: the generators reach a pre-warm during a drill."""
    seen = examples = 0

    @seeded_run(80)
    @given(timelines)
    def collect(timeline: list[tuple[float, ev.Event]]) -> None:
        nonlocal seen, examples
        examples += 1
        for before, _, after, _ in run(timeline, PREWARMED):
            if before.drill is not None and before.drill.uplink in after.prewarm:
                seen += 1

    collect()
    assert examples == 80 and seen >= 8, (examples, seen)


# -- with the simulator: how long a class waits for the satellite -------------------------------------

# Two terrestrial uplinks, so losing one leaves vital on its last: pre-warm wakes the satellite, and a
# drill of it that is running then is handed over. The drill is due at start (offset 0: no jitter),
# postponed until the uplinks are judged, and runs from 5 s on.
SITE = """
site: drill-prewarm
uplinks:
  - name: fiber
    interface: eth1
    next_hop: 198.51.100.1
    probes:
      - {kind: udp-echo, target: 192.0.2.10, interval: 200ms, timeout: 300ms}
      - {kind: udp-echo, target: 192.0.2.20, interval: 200ms, timeout: 300ms}
  - name: mobile
    interface: wwan0
    point_to_point: true
    kind: cellular
    probes: [{kind: udp-echo, target: 192.0.2.10, interval: 200ms, timeout: 500ms}]
  - name: sat
    interface: sat0
    next_hop: 203.0.113.1
    kind: satellite
    metered: true
    admit: [vital]
    standby: {mode: cold, activate: {run: [/bin/true]}, activation_time: 60s, release_after: 5m}
    probes: [{kind: icmp, target: 192.0.2.10, interval: 1s, timeout: 2s}]
classes:
  - name: vital
    match: [{dscp: [EF]}]
    path: [fiber, mobile, sat]
    redundancy: {prewarm: PREWARM}
  - name: rest
    path: [fiber, mobile]
drills:
  - {uplink: sat, every: 1h, rounds: 10, max_bytes: 100kB, max_duration: 2m, retry_after: 5s}
"""


def _site(prewarm: bool) -> Policy:
    return parse_policy_text(SITE.replace("PREWARM", "true" if prewarm else "false"), "drill-prewarm.yaml")


def _detection_bound(policy: Policy, uplink: str) -> float:
    """As test_engine_properties: the losses needed, one round of grid alignment, the last timeout."""
    spec = policy.uplinks[uplink]
    return spec.health.down_losses * min(p.interval for p in spec.probes) + max(p.timeout for p in spec.probes)


def _chain(policy: Policy, mobile_at: float, gap: float, delay: float) -> list[dict[str, Any]]:
    """The mobile uplink dies at mobile_at, the fiber `gap` later; the terminal comes up `delay` after it is asked."""
    timeline = Timeline.model_validate(
        {
            "duration": mobile_at + gap + delay + 20,
            "world": {"sat": {"rtt_ms": 600, "standby": {"activation": "ok", "delay": delay}}},
            "events": [
                {"at": mobile_at, "uplink": "mobile", "loss": 100},
                {"at": mobile_at + gap, "uplink": "fiber", "loss": 100},
            ],
        }
    )
    return Simulation(policy, timeline).run()


def _status_before(records: list[dict[str, Any]], uplink: str, t: float) -> str:
    changes = [r for r in records if r["kind"] == "uplink" and r["uplink"] == uplink and r["mono"] < t]
    return str(changes[-1]["to"]) if changes else "STANDBY"


def _outage(records: list[dict[str, Any]], since: float) -> float:
    on_sat = [
        r["mono"]
        for r in records
        if r["kind"] == "decision" and r["class"] == "vital" and r["uplink"] == "sat" and r["mono"] >= since
    ]
    assert on_sat, "vital never reached the satellite"
    return float(on_sat[0] - since)


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    drill_up=st.booleans(),
    at=st.floats(0, 1),
    gap=st.floats(0, 1),
    delay=st.floats(3, 30),  # within the satellite's activation_time (60 s): activation succeeds
)
def test_losing_the_last_uplink_during_or_after_a_drill_costs_its_detection_only(
    drill_up: bool, at: float, gap: float, delay: float
) -> None:
    """Either the drill has the satellite up (checking) when vital comes down to its last uplink, or
    that uplink lives long enough for pre-warm to bring the satellite up (before, during or after a
    drill). Either way vital waits no longer than the last uplink's loss takes to detect, and nothing
    switches the satellite off in between."""
    policy = _site(True)
    if drill_up:
        # The drill activates at 5 s; the satellite passes traffic within a probe round of `delay`
        # and is checked for 10 rounds: the mobile uplink dies in the middle of that.
        mobile_at = 5 + delay + 2 + 6 * at
        fiber_dies = mobile_at + _detection_bound(policy, "mobile") + 0.5 + 10 * gap
    else:
        mobile_at = 1 + 80 * at
        fiber_dies = mobile_at + delay + 4 + 40 * gap
    records = _chain(policy, mobile_at, fiber_dies - mobile_at, delay)
    judged = [
        r["mono"]
        for r in records
        if r["kind"] == "uplink" and r["uplink"] == "mobile" and r["to"] == "DOWN" and r["mono"] >= mobile_at
    ]
    assert judged and judged[0] < fiber_dies, "the mobile uplink was not judged DOWN before the fiber died"
    last_one = judged[0]  # from here on vital is down to the fiber: pre-warm
    if drill_up:
        assert _status_before(records, "sat", last_one) == "UP", "the drill did not have the satellite up"
    outage = _outage(records, fiber_dies)
    bound = _detection_bound(policy, "fiber") + 1e-6
    assert outage <= bound, f"vital waited {outage:.2f}s > detection {bound:.2f}s"
    released = [
        r["mono"]
        for r in records
        if r["kind"] == "standby" and r["action"] == "deactivate" and last_one <= r["mono"] <= fiber_dies + outage
    ]
    assert not released, f"the satellite was switched off at {released} while vital was down to its last uplink"


def test_a_drill_hands_the_satellite_over_to_prewarm_and_without_prewarm_an_abort_costs_the_activation() -> None:
    """The mobile uplink dies while the drill checks the satellite, the fiber ten seconds later. With
    pre-warm, the drill ends "production" and vital is on the satellite within the fiber's detection;
    without, the drill is aborted and switches the satellite off, and vital waits a whole activation
    again (the price of "abort at once", engine/drills.py)."""
    outcomes = {}
    for prewarm in (True, False):
        policy = _site(prewarm)
        records = _chain(policy, 29.0, 10.0, 20.0)
        checking = [r["mono"] for r in records if r["kind"] == "drill" and r["to"] == "checking"]
        assert checking and checking[0] < 29.0  # the drill was checking when the mobile uplink died
        ended = [(r["verdict"], r["deactivated"]) for r in records if r["kind"] == "drill" and r.get("verdict")]
        outcomes[prewarm] = (ended, _outage(records, 39.0))
    ended, outage = outcomes[True]
    assert ended == [("production", False)]
    assert outage <= _detection_bound(_site(True), "fiber") + 1e-6
    ended, outage = outcomes[False]
    assert ended == [("aborted", True)]
    assert outage > 20.0
