"""Property tests: random event sequences never break the engine's invariants."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.decide import candidate, drained, usable
from failoverd.engine.state import EngineState, Health, Lifecycle, initial_state
from failoverd.engine.step import step
from failoverd.policy import parse_policy_text
from failoverd.policy.model import Policy
from failoverd.simulate import Simulation, Timeline

POLICY = parse_policy_text(
    """
site: props
uplinks:
  - name: a
    interface: a0
    next_hop: 192.0.2.1
    probes:
      - {kind: icmp, target: 198.51.100.1, interval: 1s}
      - {kind: icmp, target: 198.51.100.2, interval: 1s}
      - {kind: icmp, target: 198.51.100.3, interval: 1s}
    health:
      degraded: {rtt_ms: 200, loss_percent: 20}
      up: {successes: 2, hold_down: 2s}
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
  - name: keeper                # sat is in its path but does not admit it
    match: [{dscp: [AF41]}]
    path: [a, b, sat]
    when_all_down: keep
    revertive: false
  - name: bulk
    path: [a, b]
    on_degraded: stay
    when_all_down: blackhole
""",
    "props.yaml",
)
UPLINKS = list(POLICY.uplinks)
CLASSES = list(POLICY.classes)
PROBES = {name: [p.key for p in u.probes] for name, u in POLICY.uplinks.items()}


def probe_results() -> st.SearchStrategy[ev.Event]:
    return st.sampled_from(UPLINKS).flatmap(
        lambda u: st.builds(
            ev.ProbeResult,
            st.just(u),
            st.sampled_from(PROBES[u]),
            st.booleans(),
            st.floats(0.001, 0.5),
        )
    )


clock_states = st.builds(
    ev.ClockChanged,
    st.sampled_from(list(ev.ClockState)),
    st.none() | st.floats(0, 1e9),
    st.just(()),
    st.floats(0, 2e9),
)
commands = st.one_of(
    st.builds(
        ev.ForceClass,
        st.just("r"),
        st.sampled_from([*CLASSES, "nope"]),
        st.sampled_from([*UPLINKS, "x"]),
        st.sampled_from(["", "maintenance"]),
        st.none() | st.floats(-1, 1e5),
        st.booleans(),
    ),
    st.builds(
        ev.DrainUplink,
        st.just("r"),
        st.sampled_from([*UPLINKS, "x"]),
        st.just("works"),
        st.none() | st.floats(1, 100),
        st.booleans(),
    ),
    st.builds(ev.Release, st.just("r"), st.none() | st.sampled_from(["o1", "o2", "o3", "o9"])),
)
events = st.one_of(
    probe_results(),
    probe_results(),
    probe_results(),
    st.builds(ev.CarrierChanged, st.sampled_from(UPLINKS), st.booleans()),
    st.builds(ev.StandbyResult, st.just("sat"), st.sampled_from(["activate", "deactivate"]), st.booleans()),
    commands,
    clock_states,
    st.just(ev.Tick()),
)
# Half the sequences start in a disaster (both terrestrial uplinks gone, the satellite coming up), so
# that the rarely reached last-resort states are explored as thoroughly as the everyday ones.
DISASTER: list[tuple[float, ev.Event]] = [
    (0.1, ev.CarrierChanged("a", False)),
    (0.1, ev.CarrierChanged("b", False)),
    (1.0, ev.StandbyResult("sat", "activate", True)),
    (0.5, ev.ProbeResult("sat", PROBES["sat"][0], True, 0.6)),
]
timelines = st.tuples(st.booleans(), st.lists(st.tuples(st.floats(0, 4), events), min_size=1, max_size=150)).map(
    lambda t: (DISASTER if t[0] else []) + t[1]
)


def check_invariants(state: EngineState, policy: Policy, effects: tuple[fx.Effect, ...]) -> None:
    for name, c in state.classes.items():
        spec = policy.classes[name]
        if c.route == "via":
            assert c.uplink is not None
            up = policy.uplinks[c.uplink]
            # Never a class on a metered uplink that does not admit it.
            assert up.admits(name), f"{name} on {c.uplink}"
            forced = state.active_override("force", name)
            pinned = forced is not None and forced.force and forced.uplink == c.uplink
            if not (usable(state, c.uplink) or pinned or spec.when_all_down == "keep"):
                # Only a more preferred uplink without evidence yet may hold a class where it is.
                assert candidate(spec, policy, state).pending, f"{name} stuck on unusable {c.uplink}"
        elif c.route in ("blackhole", "unreachable"):
            # Never dropped while an admitted, undrained uplink of its path is usable.
            for u in spec.path:
                assert not (usable(state, u) and policy.uplinks[u].admits(name) and not drained(state, u)), (
                    f"{name} is {c.route} although {u} is usable"
                )
    for o in state.overrides:
        assert o.expires > state.now
    for e in effects:
        if isinstance(e, fx.SwitchClass):
            assert e.cause.code and e.cause.text
            assert policy.uplinks[e.to_uplink].admits(e.cls) if e.to_uplink else True
    for name, link in state.uplinks.items():
        # Only an uplink in service has a verdict on its health; a hot one is always in service.
        assert link.lifecycle is Lifecycle.ACTIVE or link.health is Health.UNKNOWN
        if not policy.uplinks[name].standby.cold:
            assert link.lifecycle is Lifecycle.ACTIVE


def run(timeline: Sequence[tuple[float, ev.Event]], policy: Policy = POLICY) -> list[tuple[float, fx.Effect]]:
    t = 0.0
    state, effects = step(initial_state(policy, t), ev.Tick(), policy, t)
    out = [(t, e) for e in effects]
    for dt, event in timeline:
        # Deliver every timer that falls due before the next event, as the runtime does.
        while state.wake_at is not None and state.wake_at <= t + dt:
            state, effects = step(state, ev.Tick(), policy, state.wake_at)
            check_invariants(state, policy, effects)
            out += [(state.now, e) for e in effects]
        t += dt
        state, effects = step(state, event, policy, t)
        check_invariants(state, policy, effects)
        out += [(t, e) for e in effects]
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timelines)
def test_invariants_hold_for_any_event_sequence(timeline: list[tuple[float, ev.Event]]) -> None:
    run(timeline)


@settings(max_examples=100, deadline=None)
@given(timelines, st.floats(-3e9, 3e9))
def test_shifting_wall_clock_data_changes_no_decision(timeline: list[tuple[float, ev.Event]], shift: float) -> None:
    shifted = [
        (
            dt,
            replace(e, wall_time=e.wall_time + shift) if isinstance(e, ev.ClockChanged) and e.wall_time else e,
        )
        for dt, e in timeline
    ]
    assert run(timeline) == run(shifted)


FLAPPY = parse_policy_text(
    """
site: flappy
uplinks:
  - {name: a, interface: a0, next_hop: 192.0.2.1, health: {up: {hold_down: 0}},
     damping: {penalty: 1000, half_life: 10s, suppress: 2000, reuse: 750, max_suppress: 20s}}
  - {name: b, interface: b0, next_hop: 192.0.2.5}
classes:
  - {name: all, path: [a, b], preempt_delay: 0}
""",
    "flappy.yaml",
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.01, 5), min_size=1, max_size=400))
def test_flapping_switches_stay_within_the_damping_bound(gaps: list[float]) -> None:
    """Carrier-only uplinks, no hold-down, no preempt delay: only damping stands between a flap and a switch.

    Each fall of `a` while unsuppressed adds `penalty`; the penalty never exceeds the ceiling and decays at
    most ln2/half_life × ceiling per second, so over T seconds such falls number at most
    ceiling/penalty × (1 + T·ln2/half_life). Each fall moves the class twice (away and back).
    """
    timeline = []
    up = True
    for g in gaps:
        up = not up
        timeline.append((g, ev.CarrierChanged("a", up)))
    moves = [e for _, e in run(timeline, FLAPPY) if isinstance(e, fx.SwitchClass)]
    d = FLAPPY.uplinks["a"].damping
    duration = sum(gaps)
    bound = d.ceiling / d.penalty * (1 + duration * math.log(2) / d.half_life)
    assert len(moves) <= 1 + 2 * math.ceil(bound), f"{len(moves)} switches in {duration:.0f}s, bound {bound:.1f}"


def test_without_damping_the_same_flaps_would_exceed_the_bound() -> None:
    """The bound above is not vacuous: with damping off, fast flapping breaks it."""
    policy = parse_policy_text(
        """
site: undamped
uplinks:
  - {name: a, interface: a0, next_hop: 192.0.2.1, health: {up: {hold_down: 0}}, damping: {enabled: false}}
  - {name: b, interface: b0, next_hop: 192.0.2.5}
classes:
  - {name: all, path: [a, b], preempt_delay: 0}
""",
        "undamped.yaml",
    )
    timeline = [(0.1, ev.CarrierChanged("a", i % 2 == 1)) for i in range(400)]
    moves = [e for _, e in run(timeline, policy) if isinstance(e, fx.SwitchClass)]
    d = FLAPPY.uplinks["a"].damping
    bound = d.ceiling / d.penalty * (1 + 40 * math.log(2) / d.half_life)
    assert len(moves) > 1 + 2 * math.ceil(bound)
    damped = [e for _, e in run(timeline, FLAPPY) if isinstance(e, fx.SwitchClass)]
    assert len(damped) <= 1 + 2 * math.ceil(bound)


EMERGENCY = Path(__file__).resolve().parent.parent / "policies" / "emergency.yaml"


def _dispatch_outage(prewarm: bool, fiber_at: float, carrier_a_after: float, last_after: float, delay: float) -> float:
    """Seconds from mobile-b's death until dispatch is on the satellite, in the chain of issue 15."""
    text = EMERGENCY.read_text()
    if not prewarm:
        text = text.replace("prewarm: true", "prewarm: false")
    policy = parse_policy_text(text, "emergency.yaml")
    t_a = fiber_at + carrier_a_after
    t_b = t_a + last_after
    timeline = Timeline.model_validate(
        {
            "duration": t_b + delay + 10,
            "world": {"sat": {"rtt_ms": 600, "standby": {"activation": "ok", "delay": delay}}},
            "events": [
                {"at": fiber_at, "uplink": "fiber", "carrier": "down"},
                {"at": t_a, "carrier_outage": "carrier-a"},
                {"at": t_b, "uplink": "mobile-b", "loss": 100},
            ],
        }
    )
    on_sat = [
        r["mono"]
        for r in Simulation(policy, timeline).run()
        if r["kind"] == "decision" and r["class"] == "dispatch" and r["uplink"] == "sat" and r["mono"] >= t_b
    ]
    assert on_sat, "dispatch never reached the satellite"
    return float(on_sat[0] - t_b)


def _detection_bound(policy: Policy, uplink: str) -> float:
    """The longest the probes take to judge a dead uplink DOWN: the losses needed, one round of
    grid alignment, and the last probe's timeout."""
    spec = policy.uplinks[uplink]
    interval = min(p.interval for p in spec.probes)
    timeout = max(p.timeout for p in spec.probes)
    return spec.health.down_losses * interval + timeout + 1e-6


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fiber_at=st.floats(1, 20),
    carrier_a_after=st.floats(1, 30),
    delay=st.floats(1, 60),  # within the satellite's activation_time (90 s): activation succeeds
    slack=st.floats(5, 60),
)
def test_prewarm_bounds_the_last_uplink_outage_by_detection(
    fiber_at: float, carrier_a_after: float, delay: float, slack: float
) -> None:
    """With pre-warm, losing the last usable terrestrial uplink costs its detection time, not the activation."""
    outage = _dispatch_outage(True, fiber_at, carrier_a_after, delay + slack, delay)
    bound = _detection_bound(parse_policy_text(EMERGENCY.read_text(), "emergency.yaml"), "mobile-b")
    assert outage <= bound, f"outage {outage:.2f}s > detection bound {bound:.2f}s (activation {delay:.1f}s)"


def test_without_prewarm_the_outage_includes_the_activation() -> None:
    """The bound above is not vacuous: without pre-warm the same chain costs the whole activation."""
    outage = _dispatch_outage(False, 10, 30, 60, 20)
    assert outage > 20
    assert _dispatch_outage(True, 10, 30, 60, 20) < 1.5
