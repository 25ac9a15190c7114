"""`failoverd simulate` writes the daemon's history: the same records, stamped the same way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import failoverd.simulate as simulate_module
from failoverd.ctl import render_history
from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.records import effect_record
from failoverd.engine.state import EngineState
from failoverd.engine.step import step as engine_step
from failoverd.observe.journal import Journal
from failoverd.policy import load_policy
from failoverd.policy.model import Policy
from failoverd.simulate import Simulation, Timeline
from failoverd.statedir import StateDir

ROOT = Path(__file__).resolve().parent.parent

# Every kind of history record the engine makes: switches, uplink states, alarms, a cold standby
# brought up and let go, flushed flows, an operator command, a clock verdict (wall clock shifted).
EVERYTHING = {
    "duration": 400,
    "world": {"sat": {"rtt_ms": 600, "standby": {"activation": "ok", "delay": 20}}},
    "events": [
        {"at": 5, "uplink": "fiber", "carrier": "down", "note": "backhoe"},
        {"at": 5, "carrier_outage": "carrier-a"},
        {"at": 5, "carrier_outage": "carrier-b"},
        {"at": 40, "carrier_restored": "carrier-a"},
        {"at": 60, "command": "drain", "uplink": "mobile-a", "reason": "test", "for": "10s", "force": True},
        {"at": 80, "clock": "insane", "bound": 1000, "wall_shift": 1000},
        {"at": 90, "clock": "sane", "bound": 0.01},
        {"at": 100, "uplink": "fiber", "carrier": "up"},
    ],
}


def _policy() -> Policy:
    return load_policy(ROOT / "policies" / "emergency.yaml")


def test_a_simulated_record_is_the_journals_record_of_the_same_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    effects: list[tuple[float, fx.Effect]] = []
    real_step = engine_step  # what the simulator calls, watched on its way

    def step(
        state: EngineState, event: ev.Event, policy: Policy, now: float
    ) -> tuple[EngineState, tuple[fx.Effect, ...]]:
        state, out = real_step(state, event, policy, now)
        effects.extend((now, e) for e in out)
        return state, out

    monkeypatch.setattr(simulate_module, "step", step)
    records = [r for r in Simulation(_policy(), Timeline.model_validate(EVERYTHING)).run() if r["kind"] != "note"]
    journal = Journal(StateDir(None))
    expected = [journal.add(r, now) for now, e in effects if (r := effect_record(e)) is not None]

    assert {r["kind"] for r in records} == {"decision", "uplink", "alarm", "standby", "conntrack", "command", "clock"}
    assert [list(r) for r in records] == [list(r) for r in expected]  # the same keys, in the same order
    for sim, daemon in zip(records, expected, strict=True):
        assert type(sim["wall"]) is type(daemon["wall"]) is float
        assert {k: v for k, v in sim.items() if k != "wall"} == {k: v for k, v in daemon.items() if k != "wall"}


def test_simulated_wall_clock_is_the_epoch_plus_mono_plus_the_shift() -> None:
    sim = Simulation(_policy(), Timeline.model_validate(EVERYTHING))
    records = sim.run()
    for r in records:
        shift = 1000.0 if 80 <= r["mono"] < 90 else 0.0
        assert r["wall"] == pytest.approx(sim.wall_epoch + r["mono"] + shift, abs=1e-6), r
    assert any(80 <= r["mono"] < 90 for r in records)  # the shifted stretch is not empty
    assert records[0]["mono"] < 1 and next(r for r in records if r["kind"] == "note")["mono"] == 5


def test_failoverctl_history_reads_simulated_records() -> None:
    records = Simulation(_policy(), Timeline.model_validate(EVERYTHING)).run()
    lines = render_history(records, tty=False).splitlines()
    assert len(lines) == len(records)
    assert any("decision  dispatch: mobile-a -> unreachable  all-down:" in line for line in lines), lines


def test_simulate_json_prints_history_records(tmp_path: Path) -> None:
    tl = tmp_path / "cut.yaml"
    tl.write_text("duration: 20\nevents:\n  - {at: 5, uplink: fiber, carrier: down, note: backhoe}\n")
    r = subprocess.run(
        [sys.executable, "-m", "failoverd.cli", "simulate", "policies/lab.yaml", "--events", str(tl), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows and all(list(row)[:3] == ["wall", "mono", "kind"] for row in rows)
    assert {"kind": "note", "text": "backhoe"}.items() <= rows[[x["kind"] for x in rows].index("note")].items()
    cut = [x for x in rows if x["kind"] == "uplink" and x["to"] == "DOWN"]
    assert cut[0]["uplink"] == "fiber" and cut[0]["mono"] == 5.0 and cut[0]["cause"]["code"]
