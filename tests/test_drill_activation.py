"""A drill's activation check: timed on the uplink's lifecycle, from ACTIVATING to ACTIVE or FAILED."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from test_drill_properties import DRILL, DRILLED, HEALTHY, run, timelines

from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.state import EngineState, Lifecycle, initial_state
from failoverd.engine.step import step
from failoverd.policy.model import Policy

# Drilled only when asked (failoverctl drill run), so that the tests say when.
ON_REQUEST = replace(DRILLED, drills={"sat": replace(DRILL, every=1e6, offset=1e6)})
SAT_PROBE = ev.ProbeResult("sat", DRILLED.uplinks["sat"].probes[0].key, True, 0.6)
LIMIT = DRILLED.uplinks["sat"].standby.activation_time


def _play(policy: Policy, events: list[tuple[float, ev.Event]]) -> tuple[EngineState, list[fx.Effect]]:
    state, out = step(initial_state(policy, 0.0), ev.Tick(), policy, 0.0)
    effects = list(out)
    for t, event in events:
        while state.wake_at is not None and state.wake_at <= t:
            state, out = step(state, ev.Tick(), policy, state.wake_at)
            effects += out
        state, out = step(state, event, policy, t)
        effects += out
    return state, effects


def _activation(effects: list[fx.Effect]) -> fx.DrillCheck:
    (check,) = [e for e in effects if isinstance(e, fx.DrillCheck) and e.check == "activation"]
    return check


def test_a_drill_that_finds_the_uplink_coming_up_times_it_from_its_activation() -> None:
    """An operator's override wakes the satellite at 1 s and ends at 2 s; the drill asked for at 3 s
    finds it ACTIVATING, and it passes traffic at 5 s: it took 4 s, not the 2 s the drill watched."""
    state, effects = _play(
        ON_REQUEST,
        [
            HEALTHY[0],
            (1.0, ev.ForceClass("f", "critical", "sat", "try the satellite", 60.0)),
            (2.0, ev.Release("r", None)),
            (3.0, ev.RunDrill("d", "sat")),
            (4.0, ev.StandbyResult("sat", "activate", True)),
            (5.0, SAT_PROBE),
        ],
    )
    started = [e for e in effects if isinstance(e, fx.DrillChanged) and e.old == "idle"]
    assert [(e.new, e.cause.code) for e in started] == [("activating", "drill-requested")]
    assert not any(isinstance(e, fx.ActivateStandby) and e.cause.code == "drill-activate" for e in effects)
    check = _activation(effects)
    assert check.ok and check.value == 4.0
    assert state.drill is not None and state.drill.phase.value == "checking"


def test_an_activation_that_runs_out_of_time_fails_the_check_with_the_time_it_had() -> None:
    state, effects = _play(ON_REQUEST, [HEALTHY[0], (1.0, ev.RunDrill("d", "sat")), (30.0, ev.Tick())])
    check = _activation(effects)
    assert not check.ok and check.value == LIMIT and check.cause.code == "activate-timeout"
    ended = [e for e in effects if isinstance(e, fx.DrillChanged) and e.verdict is not None]
    assert [(e.verdict, e.cause.code, e.deactivated) for e in ended] == [("fail", "drill-activation-failed", True)]
    assert state.uplinks["sat"].lifecycle is Lifecycle.STANDBY


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timelines)
def test_the_activation_check_is_the_lifecycle_s_own_deadline(timeline: list[tuple[float, ev.Event]]) -> None:
    """Every activation check measures the time from the uplink entering ACTIVATING to the step it
    left it; it passes exactly when the uplink came up (ACTIVE), which is always within
    activation_time, and fails exactly when it did not (FAILED)."""
    entered: float | None = None
    for before, event, after, effects in run(timeline, DRILLED):
        for c in (e for e in effects if isinstance(e, fx.DrillCheck) and e.check == "activation"):
            assert entered is not None and c.value is not None, event
            assert abs(c.value - (after.now - entered)) < 1e-9, (c, entered, after.now)
            ends = [e.verdict for e in effects if isinstance(e, fx.DrillChanged) and e.verdict is not None]
            if c.ok:
                assert c.value < LIMIT and after.uplinks["sat"].lifecycle is Lifecycle.ACTIVE and not ends, c
            else:
                assert c.value <= LIMIT and ends == ["fail"], c
        was, now = before.uplinks["sat"].lifecycle, after.uplinks["sat"].lifecycle
        if now is Lifecycle.ACTIVATING and was is not Lifecycle.ACTIVATING:
            entered = after.now
