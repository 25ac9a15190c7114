"""Drill properties: over random event sequences a drill moves no production class, and an abort releases the backup."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import hypothesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seeded import seeded_run
from test_engine_properties import POLICY, PROBES, UPLINKS, check_invariants, clock_states, commands

from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.state import EngineState, Lifecycle, initial_state
from failoverd.engine.step import step
from failoverd.policy.compile import parse_window
from failoverd.policy.model import DrillSpec, Policy

DRILL = DrillSpec(
    uplink="sat",
    every=30.0,
    window=None,
    offset=0.0,
    rounds=3,
    max_loss_percent=20.0,
    max_bytes=100_000,
    max_duration=60.0,
    valid_for=45.0,
    retry_after=5.0,
    severity="critical",
)
DRILLED = replace(POLICY, drills={"sat": DRILL})
HOT_DRILLED = replace(POLICY, drills={"b": replace(DRILL, uplink="b", max_bytes=None)})

# Every terrestrial target answers once: a and b are UP and every class is on its primary, so the
# drill postponed at start (nothing judged yet) is safe when retried at 5 s; what follows is random.
HEALTHY: list[tuple[float, ev.Event]] = [
    (0.1, ev.ProbeBatch(tuple(ev.ProbeResult(u, p, True, 0.02) for u in ("a", "b") for p in PROBES[u]))),
    (5.0, ev.Tick()),
]
events = st.one_of(
    *[
        st.sampled_from(UPLINKS).flatmap(
            lambda u: st.builds(
                ev.ProbeResult, st.just(u), st.sampled_from(PROBES[u]), st.booleans(), st.floats(0.001, 0.5)
            )
        )
    ]
    * 4,
    st.builds(ev.CarrierChanged, st.sampled_from(UPLINKS), st.booleans()),
    st.builds(ev.StandbyResult, st.just("sat"), st.sampled_from(["activate", "deactivate"]), st.booleans()),
    st.builds(ev.RunDrill, st.just("r"), st.sampled_from(["sat", "b", "x"])),
    commands,
    clock_states,
    st.just(ev.Tick()),
)


def _round(sat_ok: bool) -> ev.ProbeBatch:
    """One probe round: a and b answer; the satellite (if it is up at all) answers or loses it."""
    return ev.ProbeBatch(tuple(ev.ProbeResult(u, p, u != "sat" or sat_ok, 0.03) for u in UPLINKS for p in PROBES[u]))


# Random events alone almost never let a drill pass: that takes the terminal's "activated" answer and
# several clean probe rounds through it while a and b stay UP. So half the timelines are built from
# calm stretches (everything answers, carriers come back, the terminal says it is up, overrides are
# released) broken by a few random events; every verdict is then reached in a good share of examples
# (test_the_timelines_reach_every_verdict says how good).
CALM_START: list[tuple[float, ev.Event]] = [
    (0.0, ev.CarrierChanged("a", True)),
    (0.0, ev.CarrierChanged("b", True)),
    (0.0, ev.Release("r", None)),
    (0.0, ev.StandbyResult("sat", "activate", True)),
]
# Mostly clean rounds; now and then the satellite loses one (a fail on loss, or on probes after activation).
sat_answers = st.lists(st.sampled_from([True] * 9 + [False]), min_size=1, max_size=12)
calm = sat_answers.map(lambda oks: CALM_START + [(1.0, _round(ok)) for ok in oks])
# Both terrestrial uplinks lost at once: what makes a class need the drilled satellite.
DISASTER: list[tuple[float, ev.Event]] = [(0.1, ev.CarrierChanged("a", False)), (0.1, ev.CarrierChanged("b", False))]
# An operator putting a class on the satellite: production needs it (the only way a drill of the
# satellite can end "production" without pre-warm: losing a and b takes two steps, and the first
# one already aborts the drill).
FORCE_SAT: list[tuple[float, ev.Event]] = [(0.1, ev.ForceClass("r", "critical", "sat", "real calls", 60.0, False))]
# ... either of them now and then while a drill runs (started by hand, in any phase when it comes).
interrupted = st.tuples(sat_answers, st.sampled_from([DISASTER, FORCE_SAT])).map(
    lambda t: (
        [(0.0, ev.RunDrill("r", "sat")), (0.5, ev.StandbyResult("sat", "activate", True))]
        + [(1.0, _round(ok)) for ok in t[0][:3]]
        + t[1]
    )
)
storm = st.one_of(
    st.lists(st.tuples(st.floats(0, 6), events), min_size=1, max_size=4), st.just(DISASTER), interrupted, interrupted
)
weather = st.lists(st.one_of(calm, calm, storm), min_size=1, max_size=16).map(
    lambda parts: [e for part in parts for e in part]
)
random_events = st.lists(st.tuples(st.floats(0, 6), events), min_size=1, max_size=120)
timelines = st.one_of(random_events, weather).map(lambda t: HEALTHY + t)
VERDICTS = ("pass", "fail", "aborted", "production")

Steps = list[tuple[EngineState, ev.Event, EngineState, tuple[fx.Effect, ...]]]


def run(timeline: Sequence[tuple[float, ev.Event]], policy: Policy) -> Steps:
    """Every step of the timeline (timers delivered as the runtime does): state before, event, state after, effects."""
    t = 0.0
    state = initial_state(policy, t)
    out: Steps = []

    def one(event: ev.Event, now: float) -> None:
        nonlocal state
        before = state
        state, effects = step(state, event, policy, now)
        check_invariants(state, policy, effects)
        out.append((before, event, state, effects))

    one(ev.Tick(), t)
    for dt, event in timeline:
        while state.wake_at is not None and state.wake_at <= t + dt:
            one(ev.Tick(), state.wake_at)
        t += dt
        one(event, t)
    return out


def verdicts(steps: Steps) -> set[str]:
    """The verdicts the drills of a run reached, each noted as a hypothesis event (--hypothesis-show-statistics)."""
    found = {e.verdict for _, _, _, effects in steps for e in effects if isinstance(e, fx.DrillChanged) and e.verdict}
    for v in sorted(found):
        hypothesis.event(f"verdict {v}")
    return found


def _production_needs(effects: tuple[fx.Effect, ...], uplink: str) -> bool:
    """Production asks for the uplink in this step (the drill then hands it over)."""
    for e in effects:
        if isinstance(e, fx.ActivateStandby) and e.uplink == uplink and e.cause.code == "standby-needed":
            return True
        if isinstance(e, fx.SwitchClass) and e.to_uplink == uplink:
            return True
        if isinstance(e, fx.DrillChanged) and e.verdict == "production":
            return True
    return False


def _moves(effects: tuple[fx.Effect, ...]) -> list[fx.Effect]:
    return [e for e in effects if isinstance(e, fx.SwitchClass | fx.FlushConntrack | fx.WithdrawClass)]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timelines, st.sampled_from([DRILLED, HOT_DRILLED]))
def test_a_drill_never_moves_a_production_class(timeline: list[tuple[float, ev.Event]], policy: Policy) -> None:
    """Until production itself needs the drilled uplink, every class moves (and every flow is flushed)
    exactly as it would on the same events without drills."""
    uplink = next(iter(policy.drills))
    with_drill = run(timeline, policy)
    verdicts(with_drill)
    without = run(timeline, POLICY)
    # A drill adds timer steps of its own: compare what moved, and when, up to the first moment
    # production asks for the drilled uplink in either run.
    cutoff = min(
        (after.now for steps in (with_drill, without) for _, _, after, e in steps if _production_needs(e, uplink)),
        default=float("inf"),
    )

    def moves(steps: Steps) -> list[tuple[float, list[fx.Effect]]]:
        return [(after.now, _moves(e)) for _, _, after, e in steps if after.now < cutoff and _moves(e)]

    assert moves(with_drill) == moves(without)
    for _, _, _, effects in with_drill:
        for e in effects:
            if isinstance(e, fx.SwitchClass | fx.FlushConntrack):
                assert not e.cause.code.startswith("drill"), e


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timelines)
def test_an_abort_always_deactivates_what_the_drill_activated(timeline: list[tuple[float, ev.Event]]) -> None:
    started = 0
    steps = run(timeline, DRILLED)
    verdicts(steps)
    for before, event, after, effects in steps:
        ended = [e for e in effects if isinstance(e, fx.DrillChanged) and e.verdict is not None]
        started += sum(1 for e in effects if isinstance(e, fx.DrillChanged) and e.old == "idle")
        for e in ended:
            run_before = before.drill if before.drill is not None else None
            activated = run_before is not None and run_before.activated
            released = [d for d in effects if isinstance(d, fx.DeactivateStandby) and d.uplink == e.uplink]
            if e.verdict == "production":
                # Handed over as it is: never switched off under the class that needs it.
                assert not released, f"deactivated at hand-over on {event}"
                continue
            if activated or (run_before is None and any(isinstance(a, fx.ActivateStandby) for a in effects)):
                assert released and e.deactivated, f"{e.verdict} without deactivation on {event}"
                assert after.uplinks[e.uplink].lifecycle is Lifecycle.STANDBY
            elif run_before is not None:
                assert not released, f"deactivated a link the drill did not switch on, on {event}"
        if after.drill is not None:
            # While a drill runs, what it measures is the drilled uplink only, and it is in the policy.
            assert after.drill.uplink in DRILLED.drills
    assert started >= 1  # HEALTHY makes the first drill safe: the property is exercised


def test_the_timelines_reach_every_verdict() -> None:
    """The properties above say little if the drills they watch never pass or hand over (before the
    calm stretches, no example reached "pass"): over a fixed, seeded run of the same generators, every
    verdict is reached in at least one example in twenty (the old generators reached "pass" in none).
    The share moves with the examples hypothesis draws, which depend on what ran before it in the
    same process: about 8-25 % each, so the bar sits well below that."""
    examples = 0
    reached: Counter[tuple[str, str]] = Counter()

    @seeded_run(120)
    @given(timelines)
    def collect(timeline: list[tuple[float, ev.Event]]) -> None:
        nonlocal examples
        examples += 1
        for policy in (DRILLED, HOT_DRILLED):
            reached.update((next(iter(policy.drills)), v) for v in verdicts(run(timeline, policy)))

    collect()
    assert examples == 120
    for v in VERDICTS:
        # The satellite (cold) reaches every verdict. A drill of the hot b is rarely aborted or failed
        # (a failing a puts the classes on b: production), but it must pass and hand over.
        assert reached["sat", v] >= examples // 20, f"sat {v!r} in {reached['sat', v]} of {examples}: {dict(reached)}"
        if v in ("pass", "production"):
            assert reached["b", v] >= examples // 20, f"b {v!r} in {reached['b', v]} of {examples}: {dict(reached)}"


def test_a_window_drill_waits_for_a_trusted_clock() -> None:
    window = replace(DRILL, every=None, window=parse_window("daily 00:00-23:00"), max_duration=60.0)
    policy = replace(POLICY, drills={"sat": window})
    state, _ = step(initial_state(policy, 0.0), ev.Tick(), policy, 0.0)
    state, _ = step(state, HEALTHY[0][1], policy, 0.1)
    state, effects = step(state, ev.DrillWindow("sat", 0.0, 3600.0, 1e9), policy, 0.2)
    assert state.drill is None
    assert [e.cause.code for e in effects if isinstance(e, fx.DrillPostponed)] == ["drill-clock"]
    state, _ = step(state, ev.ClockChanged(ev.ClockState.SANE), policy, 1.0)
    state, effects = step(state, ev.Tick(), policy, 5.2)  # retry_after 5 s later
    assert state.drill is not None
    assert any(isinstance(e, fx.ActivateStandby) and e.cause.code == "drill-activate" for e in effects)


def test_drill_run_is_refused_with_the_reason_when_unsafe() -> None:
    policy = replace(DRILLED, drills={"sat": replace(DRILL, every=1e6, offset=1e6)})  # not due by itself
    state, _ = step(initial_state(policy, 0.0), ev.Tick(), policy, 0.0)
    state, effects = step(state, ev.RunDrill("r1", "sat", "op"), policy, 0.05)
    reply = next(e for e in effects if isinstance(e, fx.CommandReply))
    assert not reply.ok and "not safe" in reply.text and "uplink a is UNKNOWN" in reply.text
    state, _ = step(state, HEALTHY[0][1], policy, 0.1)
    state, effects = step(state, ev.CarrierChanged("b", False), policy, 0.2)
    state, effects = step(state, ev.RunDrill("r2", "sat", "op"), policy, 0.3)
    reply = next(e for e in effects if isinstance(e, fx.CommandReply))
    assert not reply.ok and "uplink b is" in reply.text
    state, effects = step(state, ev.CarrierChanged("b", True), policy, 0.4)
    state, effects = step(state, ev.RunDrill("r3", "a", "op"), policy, 0.5)
    reply = next(e for e in effects if isinstance(e, fx.CommandReply))
    assert not reply.ok and 'no drill is defined for "a"' in reply.text
