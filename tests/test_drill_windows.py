"""Drill windows on the wall clock: the next opening, its conversion to monotonic time, the service's re-sending."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from failoverd.drillwindows import next_opening, window_event
from failoverd.policy import parse_policy_text
from failoverd.policy.compile import drill_offset, parse_window
from failoverd.services.drills import DrillService


def _ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


def test_next_opening_is_the_open_window_or_the_next() -> None:
    sun = parse_window("Sun 02:00-04:00")
    assert next_opening(sun, _ts(2026, 1, 1)) == (_ts(2026, 1, 4, 2), _ts(2026, 1, 4, 4))  # a Thursday
    assert next_opening(sun, _ts(2026, 1, 4, 3)) == (_ts(2026, 1, 4, 2), _ts(2026, 1, 4, 4))  # open now
    assert next_opening(sun, _ts(2026, 1, 4, 4)) == (_ts(2026, 1, 11, 2), _ts(2026, 1, 11, 4))  # just closed
    late = parse_window("sat,SUN 23:30-01:00")  # past midnight
    assert late.length == 90 * 60
    assert next_opening(late, _ts(2026, 1, 4, 0, 30)) == (_ts(2026, 1, 3, 23, 30), _ts(2026, 1, 4, 1))
    daily = parse_window("daily 03:00-05:00")
    assert next_opening(daily, _ts(2026, 1, 1, 6)) == (_ts(2026, 1, 2, 3), _ts(2026, 1, 2, 5))


def test_window_event_is_in_monotonic_time() -> None:
    ev = window_event("sat", parse_window("Sun 02:00-04:00"), _ts(2026, 1, 4, 1), 500.0)
    assert (ev.opens, ev.closes, ev.wall_opens) == (500.0 + 3600, 500.0 + 3 * 3600, _ts(2026, 1, 4, 2))


def test_offsets_differ_per_site_and_stay_within_the_jitter() -> None:
    offsets = {drill_offset(f"site-{i}", "sat", 1800.0) for i in range(50)}
    assert len(offsets) == 50 and all(0 <= o < 1800 for o in offsets)
    assert drill_offset("a", "sat", 1800.0) == drill_offset("a", "sat", 1800.0)


POLICY_TEXT = """
site: x
uplinks:
  - {name: fiber, interface: eth1, next_hop: 198.51.100.1}
  - name: mobile
    interface: wwan0
    next_hop: 203.0.113.1
    probes: [{kind: icmp, target: 192.0.2.10}]
classes:
  - {name: all, path: [fiber, mobile]}
drills:
  - {uplink: mobile, window: Sun 02:00-04:00, jitter: 30m}
"""
POLICY = parse_policy_text(POLICY_TEXT, "w.yaml")


def test_the_service_sends_a_window_again_only_when_it_moved() -> None:
    svc = DrillService.__new__(DrillService)
    svc.sent = {}
    wall = _ts(2026, 1, 1)
    assert [e.uplink for e in svc.openings(POLICY, wall, 100.0)] == ["mobile"]
    assert svc.openings(POLICY, wall + 60, 160.0) == []  # both clocks moved alike: nothing new
    stepped = svc.openings(POLICY, wall + 60 + 3600, 220.0)  # the wall clock stepped an hour
    assert len(stepped) == 1 and stepped[0].opens == svc.sent["mobile"].opens
    assert POLICY.drills["mobile"].offset < 1800


def test_drill_commands_through_the_table() -> None:
    from failoverd.control.commands import dispatch
    from failoverd.control.engineonly import EngineGateway
    from failoverd.ctl import render_drills

    g = EngineGateway(POLICY_TEXT)
    refused = asyncio.run(dispatch(g, {"cmd": "drill-run", "uplink": "mobile", "by": "op"}))
    assert not refused["ok"] and "not safe to drill mobile: uplink fiber is UNKNOWN" in refused["error"]
    assert not asyncio.run(dispatch(g, {"cmd": "drill-run", "uplink": "mobile"}, may_change=False))["ok"]
    status = asyncio.run(dispatch(g, {"cmd": "drill-status"}, may_change=False))
    assert status["ok"] and [r["uplink"] for r in status["drills"]] == ["mobile"]
    assert status["drills"][0]["verified"] is False
    assert "mobile" in render_drills(status["drills"], tty=False)


def test_history_renders_drill_records() -> None:
    from failoverd.ctl import render_history
    from failoverd.policy import load_policy
    from failoverd.simulate import Simulation, Timeline

    timeline = Timeline.model_validate(
        {
            "duration": 560,
            "wall_start": "2026-01-04T02:20:00Z",
            "world": {"sat": {"rtt_ms": 600, "standby": {"activation": "ok", "delay": 20}}},
            "events": [{"at": 0, "clock": "sane"}],
        }
    )
    records = Simulation(
        load_policy(Path(__file__).resolve().parent.parent / "policies" / "emergency.yaml"), timeline
    ).run()
    text = render_history([r for r in records if r["kind"].startswith("drill")], tty=False)
    assert "sat: checking -> idle PASS" in text and "sat activation 21.307s ok" in text
