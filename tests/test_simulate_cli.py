"""`failoverd simulate`: what an engineer rehearsing a policy runs and reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def failoverd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "failoverd.cli", *args], capture_output=True, text=True, cwd=ROOT, check=False
    )


def test_simulate_json_lines(tmp_path: Path) -> None:
    tl = tmp_path / "cut.yaml"
    tl.write_text("duration: 20\nevents:\n  - {at: 5, uplink: fiber, carrier: down, note: backhoe}\n")
    r = failoverd("simulate", "policies/lab.yaml", "--events", str(tl), "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    decisions = [row for row in rows if row["kind"] == "decision"]
    assert all({"mono", "class", "uplink", "cause"} <= row.keys() for row in decisions)
    moved = [(d["mono"], d["class"], d["uplink"]) for d in decisions if d["mono"] >= 5]
    assert moved == [(5.0, "critical", "mobile-a"), (5.0, "bulk", "mobile-a")]
    assert decisions[-1]["cause"]["code"] == "path"
    assert decisions[-1]["cause"]["text"].startswith("mobile-a is the first usable uplink")


def test_simulate_human_output_and_blackhole_is_null(tmp_path: Path) -> None:
    tl = tmp_path / "all.yaml"
    tl.write_text(
        "duration: 10\nevents:\n"
        "  - {at: 2, uplink: fiber, carrier: down}\n"
        "  - {at: 2, uplink: mobile-a, carrier: down}\n"
        "  - {at: 2, uplink: mobile-b, carrier: down}\n"
    )
    r = failoverd("simulate", "policies/lab.yaml", "--events", str(tl))
    assert r.returncode == 0, r.stderr
    assert "bulk" in r.stdout and "-> blackhole" in r.stdout
    r = failoverd("simulate", "policies/lab.yaml", "--events", str(tl), "--json")
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    bulk = [row for row in rows if row["kind"] == "decision" and row["class"] == "bulk"]
    assert bulk[-1]["uplink"] is None and bulk[-1]["route"] == "blackhole"


def test_simulate_rejects_a_bad_timeline_with_location(tmp_path: Path) -> None:
    tl = tmp_path / "bad.yaml"
    tl.write_text("duration: 20\nevents:\n  - {at: 5, uplink: fibre, carrier: down}\n  - {at: x}\n")
    r = failoverd("simulate", "policies/lab.yaml", "--events", str(tl))
    assert r.returncode == 2
    assert f"{tl}:4:10: events.1.at: invalid duration 'x'" in r.stderr
    tl.write_text("duration: 20\nevents:\n  - {at: 5, uplink: fibre, carrier: down}\n")
    r = failoverd("simulate", "policies/lab.yaml", "--events", str(tl))
    assert r.returncode == 2
    assert f'{tl}:3:21: events.0.uplink: unknown uplink "fibre"' in r.stderr


def test_timeline_commands_go_through_the_command_table(tmp_path: Path) -> None:
    tl = tmp_path / "cmd.yaml"
    tl.write_text(
        "duration: 20\nevents:\n"
        "  - {at: 2, command: drain, uplink: fiber, reason: splice, for: 1m}\n"
        "  - {at: 4, command: failover, class: critical, to: mobile-b}\n"
    )
    r = failoverd("simulate", "policies/lab.yaml", "--events", str(tl))
    # the table's own refusal, located in the timeline file
    assert r.returncode == 2 and f"{tl}:4:22: events.1.command: failover: missing reason" in r.stdout + r.stderr, r
    tl.write_text(
        "duration: 20\nevents:\n"
        "  - {at: 2, command: drain, uplink: fiber, reason: splice, for: 1m}\n"
        "  - {at: 4, command: release, all: true}\n"
    )
    r = failoverd("simulate", "policies/lab.yaml", "--events", str(tl), "--json")
    assert r.returncode == 0, r.stderr
    replies = [json.loads(line) for line in r.stdout.splitlines() if json.loads(line)["kind"] == "command"]
    assert [(x["mono"], x["ok"]) for x in replies] == [(2.0, True), (4.0, True)]
    assert replies[0]["text"] == "override o1: drain fiber for 60s", replies  # `for: 1m` parsed by the table
    assert replies[0]["changes"] == ["critical: fiber -> mobile-a", "bulk: fiber -> mobile-a"]
