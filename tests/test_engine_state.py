"""An uplink's two state machines: health (the verdict on evidence) and the cold-standby lifecycle."""

from __future__ import annotations

from pathlib import Path

import pytest

from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.state import (
    HEALTH_TRANSITIONS,
    LIFECYCLE_TRANSITIONS,
    Health,
    Lifecycle,
    UplinkState,
    initial_state,
    initial_uplink,
    judge,
    switch,
)
from failoverd.engine.step import step
from failoverd.errors import EngineBug
from failoverd.policy import load_policy

WHY = fx.Cause("test", "test")
LAB = load_policy(Path(__file__).resolve().parent.parent / "policies" / "lab.yaml")


def test_every_state_has_its_row_in_the_tables() -> None:
    assert set(HEALTH_TRANSITIONS) == set(Health)
    assert set(LIFECYCLE_TRANSITIONS) == set(Lifecycle)
    assert all(new is not old for old, row in HEALTH_TRANSITIONS.items() for new in row)


def test_a_move_the_table_does_not_list_raises() -> None:
    hot = initial_uplink(cold=False, now=0.0)
    up = judge(hot, Health.UP, 1.0, WHY)
    with pytest.raises(EngineBug, match="UP -> UP"):
        judge(up, Health.UP, 2.0, WHY)
    with pytest.raises(EngineBug, match="UP -> UNKNOWN"):
        judge(up, Health.UNKNOWN, 2.0, WHY)
    with pytest.raises(EngineBug, match="UP -> ACTIVATING"):
        switch(up, Lifecycle.ACTIVATING, 2.0, WHY)
    cold = initial_uplink(cold=True, now=0.0)
    with pytest.raises(EngineBug, match="STANDBY -> UP"):
        judge(cold, Health.UP, 1.0, WHY)  # a link that is off has no health to judge
    with pytest.raises(EngineBug, match="STANDBY -> ACTIVE"):
        switch(cold, Lifecycle.ACTIVE, 1.0, WHY)


def test_leaving_service_voids_the_verdict_and_the_word_shown_follows() -> None:
    cold = initial_uplink(cold=True, now=0.0)
    assert (cold.lifecycle, cold.health, cold.status) == (Lifecycle.STANDBY, Health.UNKNOWN, "STANDBY")
    on = switch(switch(cold, Lifecycle.ACTIVATING, 1.0, WHY), Lifecycle.ACTIVE, 2.0, WHY)
    assert (on.status, on.unjudged) == ("UNKNOWN", True)
    up = judge(on, Health.UP, 3.0, WHY)
    assert (up.status, up.usable_since, up.up_since) == ("UP", 3.0, 3.0)
    off = switch(up, Lifecycle.STANDBY, 4.0, WHY)
    assert (off.status, off.health, off.usable_since, off.up_since) == ("STANDBY", Health.UNKNOWN, None, None)
    assert off.unjudged is False
    failed = switch(switch(off, Lifecycle.ACTIVATING, 5.0, WHY), Lifecycle.FAILED, 6.0, WHY)
    assert (failed.status, failed.since) == ("FAILED", 6.0)


def test_the_words_shown_are_the_seven_operators_know() -> None:
    shown = {UplinkState(Health.UNKNOWN, 0.0, WHY, lc).status for lc in Lifecycle if lc is not Lifecycle.ACTIVE}
    shown |= {UplinkState(h, 0.0, WHY).status for h in Health}
    assert shown == {"UNKNOWN", "UP", "DEGRADED", "DOWN", "STANDBY", "ACTIVATING", "FAILED"}


def test_a_cold_uplink_reports_its_lifecycle_then_its_health() -> None:
    """The satellite in the lab policy, needed when every other uplink is gone."""
    state, effects = step(initial_state(LAB, 0.0), ev.Tick(), LAB, 0.0)
    timeline: list[tuple[ev.Event, float]] = [
        (ev.CarrierChanged(n, False), 1.0) for n in ("fiber", "mobile-a", "mobile-b")
    ]
    timeline += [
        (ev.StandbyResult("sat", "activate", True), 2.0),
        (ev.ProbeResult("sat", "udp-echo:198.19.0.1:7", True, 0.6), 2.5),
    ]
    for event, t in timeline:
        state, more = step(state, event, LAB, t)
        effects += more
    changes = [(e.old, e.new) for e in effects if isinstance(e, fx.UplinkChanged) and e.uplink == "sat"]
    assert changes == [("STANDBY", "ACTIVATING"), ("ACTIVATING", "UP")]
    sat = state.uplinks["sat"]
    assert (sat.lifecycle, sat.health, sat.cause.code) == (Lifecycle.ACTIVE, Health.UP, "standby-up")
    assert state.classes["critical"].uplink == "sat"
