"""The incident report: time on each uplink from the history's records, the clocks it trusts, what it lists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from failoverd import report
from failoverd.policy import load_policy
from failoverd.simulate import Simulation, Timeline

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_790_000_000.0  # a wall time: 2026-09-21


def rec(kind: str, wall: float, mono: float, **fields: Any) -> dict[str, Any]:
    return {"wall": wall, "mono": mono, "kind": kind, **fields}


def decision(
    wall: float, mono: float, cls: str, uplink: str | None, route: str = "via", code: str = "path"
) -> dict[str, Any]:
    cause = {"code": code, "text": f"{cls} to {uplink or route}", "evidence": {}}
    return rec("decision", wall, mono, **{"class": cls, "uplink": uplink, "route": route, "cause": cause})


def test_time_on_each_uplink_adds_up_to_the_period_and_starts_where_the_class_was() -> None:
    records = [
        rec("start", T0 - 100, 5.0, boot="b1", pid=1, policy="p.yaml"),
        decision(T0 - 90, 15.0, "dispatch", "fiber"),
        decision(T0 + 10, 115.0, "dispatch", "mobile-a", code="probe-loss"),
        decision(T0 + 40, 145.0, "dispatch", None, route="unreachable", code="all-down"),
        decision(T0 + 45, 150.0, "dispatch", "sat"),
    ]
    inc = report.build(report.select(records, T0, T0 + 60), T0, T0 + 60)
    on = inc.time_on()["dispatch"]
    assert on == pytest.approx({"fiber": 10.0, "mobile-a": 30.0, "unreachable": 5.0, "sat": 15.0})
    assert sum(on.values()) == pytest.approx(60.0)
    assert inc.switches() == {"dispatch": 3}  # the decision before the period is not one of its switches
    text = report.markdown(inc)
    assert "without a route" in text and "| dispatch | mobile-a 30.0 s (50 %)" in text
    assert "5.0 s" in text  # unreachable


def test_durations_come_from_the_monotonic_clock_within_a_boot() -> None:
    # The wall clock was stepped 1000 s forward between the two decisions (the incident is a time
    # fault): 20 s on mobile-a by the monotonic clock, not 1020.
    records = [
        rec("start", T0 - 10, 1.0, boot="b1"),
        decision(T0 - 5, 6.0, "dispatch", "fiber"),
        decision(T0 + 10, 21.0, "dispatch", "mobile-a"),
        decision(T0 + 1030, 41.0, "dispatch", "fiber"),
    ]
    inc = report.build(report.select(records, T0, T0 + 1040), T0, T0 + 1040)
    on = inc.time_on()["dispatch"]
    assert on["mobile-a"] == pytest.approx(20.0)
    assert not inc.wall_only


def test_across_a_reboot_the_wall_clock_is_all_there_is_and_the_report_says_so() -> None:
    records = [
        rec("start", T0 - 10, 1000.0, boot="b1"),
        decision(T0 + 1, 1011.0, "dispatch", "mobile-a"),
        rec("start", T0 + 31, 3.0, boot="b2"),  # rebooted: the monotonic clock starts again
        decision(T0 + 32, 4.0, "dispatch", "fiber"),
    ]
    inc = report.build(report.select(records, T0, T0 + 60), T0, T0 + 60)
    assert inc.time_on()["dispatch"]["mobile-a"] == pytest.approx(31.0)
    assert inc.wall_only
    assert "some durations come from the wall clock" in report.markdown(inc)


def test_parse_when_takes_spans_ago_unix_and_iso_times_and_refuses_the_rest() -> None:
    now = 1_800_000_000.0
    assert report.parse_when("now", now) == now
    assert report.parse_when("2h", now) == now - 7200
    assert report.parse_when("90m", now) == now - 5400
    assert report.parse_when("1790000000", now) == 1_790_000_000.0
    assert report.parse_when("2026-12-02T10:00", now) == report.parse_when("2026-12-02T10:00:00Z", now)
    assert report.parse_when("2026-12-02T11:00+01:00", now) == report.parse_when("2026-12-02T10:00Z", now)
    with pytest.raises(ValueError, match="is not a time"):
        report.parse_when("yesterday-ish", now)
    with pytest.raises(ValueError, match="empty"):
        report.build([], now, now - 1)


def _simulated_history(tmp_path: Path) -> Path:
    """golden 18's chain of failures (fiber, carrier-a, mobile-b; the satellite pre-warmed), as a
    state dir's history file: the simulator's records, stamped as the daemon stamps them."""
    spec = YAML(typ="safe").load((ROOT / "tests/golden/18-prewarm.yaml").read_text())
    # An operator acknowledges the fiber's alarm a minute after the cut.
    ack = {"at": 70, "command": "ack", "alarm": "uplink-down:fiber", "reason": "splice crew called", "by": "op/alice"}
    spec["timeline"]["events"].append(ack)
    sim = Simulation(load_policy(ROOT / spec["policy"]), Timeline.model_validate(spec["timeline"]))
    lines = [json.dumps(rec("start", T0, 0.0, boot="b1", pid=7, policy="emergency.yaml"))]
    for r in sim.run():
        if r["kind"] in ("probe",):
            continue
        lines.append(json.dumps({**r, "wall": T0 + r["mono"], "mono": r["mono"]}))
    state = tmp_path / "state"
    state.mkdir()
    (state / "history.jsonl").write_text("\n".join(lines) + "\n{torn")
    return state


def test_failoverd_report_offline_tells_the_simulated_incident(tmp_path: Path) -> None:
    state = _simulated_history(tmp_path)
    out, png = tmp_path / "report.md", tmp_path / "report.png"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "failoverd.cli",
            "report",
            str(state),
            "--since",
            str(T0),
            "--until",
            str(T0 + 300),
            "--policy",
            str(ROOT / "policies/emergency.yaml"),
            "--out",
            str(out),
            "--plot",
            str(png),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert text.startswith("# Incident report — dispatch-north")
    # The faults of the timeline with their causes: the fiber's carrier at 10 s, carrier-a ~40 s, mobile-b ~100 s.
    assert "| fiber | UP → DOWN | `carrier-loss`" in text
    assert "| mobile-a | DEGRADED → DOWN | `probe-loss`" in text and "| mobile-b | DEGRADED → DOWN |" in text
    # Decisions with their causes, and the pre-warm of the satellite.
    assert "| dispatch | mobile-b → sat |" in text
    assert "| bulk | blackhole → mobile-a |" in text  # where it was, though the record names no uplink left
    assert "| sat | activate | `prewarm`" in text
    assert "`redundancy-lost`" in text
    assert "| uplink-down:fiber | warning | acknowledged by op/alice, 1.0 min after it was raised |" in text
    assert "| uplink-down:fiber | warning | cleared after 2.5 min |" in text  # the fiber proven again at ~161 s
    # dispatch: fiber 10 s, then mobile-a ~30 s, mobile-b ~60 s, the satellite ~120 s, fiber again from ~221 s.
    inc_line = next(line for line in text.splitlines() if line.startswith("| dispatch |"))
    assert "sat 2.0 min" in inc_line and "without a route" not in inc_line
    assert "Metered uplinks: sat." in text and "dispatch 2.0 min on sat" in text
    assert png.stat().st_size > 10_000
    bad = subprocess.run(
        [sys.executable, "-m", "failoverd.cli", "report", str(state), "--since", "someday"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert bad.returncode == 2 and "is not a time" in bad.stderr


def meter(wall: float, mono: float, uplink: str, rx: int, tx: int) -> dict[str, Any]:
    return rec("meter", wall, mono, uplink=uplink, interface="sat0", rx_bytes=rx, tx_bytes=tx)


def test_bytes_on_a_metered_uplink_count_from_the_last_reading_before_the_period_and_survive_a_reset() -> None:
    records = [
        rec("start", T0 - 100, 1.0, boot="b1"),
        meter(T0 - 50, 51.0, "sat", 1_000, 2_000),  # the baseline the period counts from
        decision(T0 + 5, 106.0, "dispatch", "sat"),
        meter(T0 + 5, 106.0, "sat", 1_500, 2_600),
        meter(T0 + 20, 121.0, "sat", 300, 400),  # the terminal's interface was created again: from zero
        meter(T0 + 30, 131.0, "sat", 900, 1_400),
        meter(T0 + 90, 191.0, "sat", 99_999, 99_999),  # after the period
    ]
    inc = report.build(report.select(records, T0, T0 + 60), T0, T0 + 60, metered=("sat",))
    rx, tx, last = inc.metered_bytes()["sat"]
    assert (rx, tx) == (500 + 300 + 600, 600 + 400 + 1_000)
    assert last == T0 + 30
    assert "Bytes on sat: 2000 sent, 1400 received" in report.markdown(inc)


def test_before_the_first_decision_the_class_is_not_known_rather_than_without_a_route() -> None:
    records = [rec("start", T0 + 1, 1.0, boot="b1"), decision(T0 + 2, 2.0, "dispatch", "fiber")]
    inc = report.build(report.select(records, T0, T0 + 10), T0, T0 + 10)
    assert inc.time_on()["dispatch"] == pytest.approx({report.UNKNOWN: 2.0, "fiber": 8.0})
    assert "| dispatch | fiber 8.0 s (80 %), not known 2.0 s (20 %) | 0 | 1 |" in report.markdown(inc)
