"""Drills across restarts: the schedule and last result survive, a drill cut short by a restart is recorded
as aborted and its terminal switched off, and a passing drill clears the drill-failed alarm."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from failoverd import statedir
from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.drillstate import Check, DrillPhase, DrillResult, DrillRun, DrillSchedule
from failoverd.engine.records import effect_record
from failoverd.engine.state import EngineState, Health, Lifecycle, restored_state
from failoverd.engine.step import step
from failoverd.observe.status import drill_rows
from failoverd.policy import load_policy
from failoverd.simulate import Simulation, Timeline
from failoverd.statedir import StateDir, load_drills, save_drills

ROOT = Path(__file__).resolve().parent.parent
LAB = load_policy(ROOT / "policies" / "lab.yaml")  # sat: cold, drilled every 7 d, retry_after 1 h
EMERGENCY = load_policy(ROOT / "policies" / "emergency.yaml")
WEEK = 7 * 86400.0


def _first(state: EngineState, now: float) -> tuple[EngineState, tuple[fx.Effect, ...]]:
    return step(state, ev.Tick(), LAB, now)


def _deactivations(effects: tuple[fx.Effect, ...]) -> list[tuple[str, str]]:
    return [(e.uplink, e.cause.code) for e in effects if isinstance(e, fx.DeactivateStandby)]


# -- 1. a restart mid-drill ------------------------------------------------------------------------


def test_a_restart_mid_drill_switches_the_terminal_off_and_records_the_drill_aborted() -> None:
    """Before, the restored state made sat STANDBY and nothing ever sent its deactivation: a terminal
    the killed daemon had switched on for a drill stayed on for good."""
    run = DrillRun("sat", DrillPhase.CHECKING, 40.0, "operator", activated=True, verified_before=10.0)
    state = restored_state(LAB, 100.0, {"critical": ("fiber", "via"), "bulk": ("fiber", "via")}, drill=run)
    assert state.uplinks["sat"].lifecycle is Lifecycle.STANDBY
    state, effects = _first(state, 100.0)
    assert _deactivations(effects) == [("sat", "restart-release")]
    deactivate = next(e for e in effects if isinstance(e, fx.DeactivateStandby))
    assert deactivate.command is not None and deactivate.command.argv == ("ip", "link", "set", "sat0", "down")
    ended = [e for e in effects if isinstance(e, fx.DrillChanged)]
    assert len(ended) == 1
    assert (ended[0].old, ended[0].new, ended[0].verdict, ended[0].deactivated) == ("checking", "idle", "aborted", True)
    assert ended[0].cause.code == "drill-restart" and "restarted mid-drill" in ended[0].cause.text
    # The history has it, and so has the drill's last result (failoverctl drill status).
    record = effect_record(ended[0])
    assert record is not None and record["verdict"] == "aborted" and record["cause"]["code"] == "drill-restart"
    last = state.drills["sat"].last
    assert last is not None and last.verdict == "aborted" and last.cause.code == "drill-restart"
    assert state.drills["sat"].due_at == 100.0 + LAB.drills["sat"].retry_after  # retried as any abort
    # Coming UP for the drill proves nothing: the proof goes back to what it was before the drill.
    assert state.uplinks["sat"].verified_at == 10.0
    assert state.drill is None
    # Once: the next steps send nothing more.
    state, effects = _first(state, 101.0)
    assert _deactivations(effects) == [] and not [e for e in effects if isinstance(e, fx.DrillChanged)]


def test_every_start_switches_off_the_cold_uplinks_no_adopted_class_uses() -> None:
    """Pre-warm or production may have left the terminal on when the daemon died, with no class on it
    now (or none the kernel still routes): the standby 'off' command is idempotent, so it is sent."""
    _, effects = _first(restored_state(LAB, 5.0, {"critical": ("fiber", "via")}), 5.0)
    assert _deactivations(effects) == [("sat", "restart-release")]
    cause = next(e.cause for e in effects if isinstance(e, fx.DeactivateStandby))
    assert "no class is routed via sat" in cause.text
    assert not [e for e in effects if isinstance(e, fx.DrillChanged)]  # no drill was running


def test_a_cold_uplink_an_adopted_class_is_routed_via_stays_on_and_in_service() -> None:
    """Before, it was restored STANDBY while carrying the class, and re-activated with the cause
    "needed by an override" (there was none)."""
    state = restored_state(LAB, 5.0, {"critical": ("sat", "via"), "bulk": ("mobile-a", "via")})
    sat = state.uplinks["sat"]
    assert (sat.lifecycle, sat.health, sat.activated) == (Lifecycle.ACTIVE, Health.UNKNOWN, True)
    assert sat.cause.code == "adopted" and "critical" in sat.cause.text
    state, effects = _first(state, 5.0)
    assert _deactivations(effects) == []
    assert not [e for e in effects if isinstance(e, fx.ActivateStandby)]
    assert state.classes["critical"].uplink == "sat"
    # Its probes judge it like any uplink in service.
    state, _ = step(state, ev.ProbeResult("sat", "udp-echo:198.19.0.1:7", True, 0.6), LAB, 5.5)
    assert state.uplinks["sat"].lifecycle is Lifecycle.ACTIVE


def test_the_restart_release_waits_for_nothing_a_class_needs_in_the_first_step() -> None:
    """An operator's override restored onto the satellite activates it in the first step: switching it
    off in the same step would race the activation."""
    from failoverd.engine.state import Override

    forced = Override("o1", "force", "critical", "sat", "test", "ops", 0.0, 600.0, force=True)
    _, effects = _first(restored_state(LAB, 5.0, {}, (forced,), 1), 5.0)
    assert [e.uplink for e in effects if isinstance(e, fx.ActivateStandby)] == ["sat"]
    assert _deactivations(effects) == []


# -- 2. the schedule and the last result survive -------------------------------------------------


def _saved(
    tmp_path: Path, schedules: dict[str, DrillSchedule], run: DrillRun | None, mono: float, wall: float
) -> StateDir:
    state = StateDir(tmp_path)
    save_drills(state, run, schedules, mono=mono, wall=wall)
    return state


def test_the_drill_schedule_and_last_result_survive_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statedir, "boot_id", lambda: "boot 1")
    result = DrillResult(
        "fail",
        900.0,
        fx.Cause("drill-loss", "sat lost 50.0% of its probes", (("loss", "50"),)),
        (Check("activation", 3.25, "s", True), Check("loss", 50.0, "%", False)),
    )
    sch = DrillSchedule(due_at=5000.0, last=result, verified_at=700.0, alarmed=True)
    state = _saved(tmp_path, {"sat": sch}, None, mono=1000.0, wall=50_000.0)
    # The same boot: monotonic instants hold as they are.
    run, got, note = load_drills(state, mono=1200.0, wall=50_200.0)
    assert run is None and note == ""
    assert got["sat"] == sch
    # After a reboot, by the wall clock.
    monkeypatch.setattr(statedir, "boot_id", lambda: "boot 2")
    run, got, note = load_drills(state, mono=30.0, wall=51_000.0)
    assert got["sat"].last == replace(result, at=30.0 - 1100.0)
    assert got["sat"].due_at == 30.0 + 3000.0  # due 4000 s after the save, 1000 s of which went by
    assert got["sat"].verified_at == 30.0 - 1300.0
    assert got["sat"].alarmed
    # A wall clock set back behind the saved result (not set yet at boot): the past times are dropped.
    run, got, note = load_drills(state, mono=30.0, wall=10.0)
    assert got["sat"].last is None and got["sat"].verified_at is None
    assert "sat" in note


def test_an_interval_drill_keeps_its_due_time_across_restarts() -> None:
    """Before, every start drilled `offset` seconds later: a daemon restarted hourly drilled hourly
    (or never, if the offset was longer than its uptime)."""
    spec = LAB.drills["sat"]
    saved = {"sat": DrillSchedule(due_at=3 * 86400.0)}
    state, _ = _first(restored_state(LAB, 100.0, {}, drills=saved), 100.0)
    assert state.drills["sat"].due_at == 3 * 86400.0
    # Nothing saved (a first start): at the offset, as before.
    state, _ = _first(restored_state(LAB, 100.0, {}), 100.0)
    assert state.drills["sat"].due_at is not None and state.drills["sat"].due_at >= 100.0 + spec.offset
    # A due time further than one interval away cannot be right (a shorter `every`, a wrong clock at save).
    far = {"sat": DrillSchedule(due_at=100.0 + 3 * WEEK)}
    state = restored_state(LAB, 100.0, {}, drills=far)
    assert state.drills["sat"].due_at == 100.0 + spec.offset + spec.every  # type: ignore[operator]


def test_a_window_drilled_before_a_restart_is_not_drilled_again_in_the_same_window() -> None:
    opens_wall = 1_767_492_000.0  # Sun 2026-01-04 02:00 UTC
    passed = DrillResult("pass", 40.0, fx.Cause("drill-pass", "sat came up"))
    saved = {"sat": DrillSchedule(due_at=None, window=opens_wall, window_done=True, last=passed, verified_at=40.0)}
    window = ev.DrillWindow("sat", opens=10.0, closes=10.0 + 7200, wall_opens=opens_wall)
    state = restored_state(EMERGENCY, 100.0, {}, drills=saved)
    state, _ = step(state, window, EMERGENCY, 100.0)
    assert state.drills["sat"].due_at is None and state.drills["sat"].window_done
    # Without the saved timetable, the same window would be drilled again.
    fresh, _ = step(restored_state(EMERGENCY, 100.0, {}), window, EMERGENCY, 100.0)
    assert fresh.drills["sat"].due_at is not None


def test_a_window_drill_cut_short_by_a_restart_is_retried_retry_after_later() -> None:
    opens_wall = 1_767_492_000.0  # Sun 2026-01-04 02:00 UTC
    spec = EMERGENCY.drills["sat"]
    saved = {"sat": DrillSchedule(due_at=10.0 + spec.offset, window=opens_wall)}
    run = DrillRun("sat", DrillPhase.ACTIVATING, 90.0, "schedule", activated=True)
    state = restored_state(EMERGENCY, 100.0, {}, drill=run, drills=saved)
    window = ev.DrillWindow("sat", opens=10.0, closes=10.0 + 7200, wall_opens=opens_wall)
    state, _ = step(state, window, EMERGENCY, 100.0)
    assert state.drills["sat"].due_at == 100.0 + spec.retry_after
    assert state.drills["sat"].postponed is not None and "restarted mid-drill" in state.drills["sat"].postponed


def test_drill_status_shows_the_last_result_after_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statedir, "boot_id", lambda: "boot 1")
    result = DrillResult("pass", 900.0, fx.Cause("drill-pass", "sat came up and carried 40 probes (0.0% loss)"))
    state = _saved(tmp_path, {"sat": DrillSchedule(due_at=9000.0, last=result, verified_at=900.0)}, None, 1000.0, 1e6)
    run, drills, _ = load_drills(state, mono=1100.0, wall=1e6 + 100)
    engine = restored_state(LAB, 1100.0, {}, drill=run, drills=drills)
    (row,) = drill_rows(LAB, engine, 1100.0)
    assert row["last"]["verdict"] == "pass" and row["last"]["age_s"] == 200.0
    assert row["last"]["cause"]["code"] == "drill-pass"
    assert row["due_in_s"] == 7900.0 and row["verified_age_s"] == 200.0


def test_a_running_drill_is_saved_and_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statedir, "boot_id", lambda: "boot 1")
    run = DrillRun("sat", DrillPhase.ACTIVATING, 950.0, "operator", activated=True, verified_before=None, bytes=77)
    state = _saved(tmp_path, {}, run, mono=1000.0, wall=50_000.0)
    got, _, note = load_drills(state, mono=1010.0, wall=50_010.0)
    assert got == DrillRun("sat", DrillPhase.ACTIVATING, 950.0, "operator", activated=True)
    assert note == ""
    # A document that is not one is said so, and nothing is restored.
    (tmp_path / statedir.DRILLS).write_text('{"boot_id": 1, "running": {"uplink": 3}}')
    got, schedules, note = load_drills(state, mono=1010.0, wall=50_010.0)
    assert got is None and schedules == {} and "drills.json" in note


# -- 3. the drill-failed alarm is cleared by a pass ----------------------------------------------


def _drill_timeline(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    timeline = Timeline.model_validate(
        {
            "duration": 1500,
            "wall_start": "2026-01-07T12:00:00Z",  # a Wednesday: no window drill on its own
            "world": {"sat": {"rtt_ms": 600, "standby": {"activation": "ok", "delay": 20}}},
            "events": [{"at": 0, "clock": "sane"}, *events],
        }
    )
    return Simulation(EMERGENCY, timeline).run()


def test_a_pass_after_a_failed_drill_clears_the_alarm() -> None:
    """Before, drill-failed was raised and never cleared: the NMS showed a broken backup for good."""
    records = _drill_timeline(
        [
            {"at": 50, "uplink": "sat", "loss": 100},
            {"at": 60, "command": "drill-run", "uplink": "sat"},
            {"at": 700, "uplink": "sat", "loss": 0},
            {"at": 800, "command": "drill-run", "uplink": "sat"},
            {"at": 1100, "command": "drill-run", "uplink": "sat"},  # a second pass: nothing more to clear
        ]
    )
    verdicts = [r["verdict"] for r in records if r["kind"] == "drill" and "verdict" in r]
    assert verdicts == ["fail", "pass", "pass"]
    alarms = [(r["severity"], r["cause"]["code"]) for r in records if r["kind"] == "alarm" and r["subject"] == "sat"]
    assert alarms == [("critical", "drill-failed"), ("critical", "drill-passed")]  # cleared with its severity


def test_a_pass_with_no_failed_drill_before_raises_nothing() -> None:
    records = _drill_timeline([{"at": 60, "command": "drill-run", "uplink": "sat"}])
    assert [r["verdict"] for r in records if r["kind"] == "drill" and "verdict" in r] == ["pass"]
    assert [r for r in records if r["kind"] == "alarm" and r["subject"] == "sat"] == []
