"""The fleet benchmark at 20 gateways on both topologies: every command reaches every simulated gateway and is
answered, the gateways really ran the engine (the last command shows in their statuses), the namespace is gone."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from netlab import PY, ROOT


def test_the_fleet_benchmark_commands_and_counts_every_simulated_gateway(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates the fo-bench-fleet network namespace")
    out = tmp_path / "fleet.json"
    # Three rounds: failover, release, failover: the statuses read after them show every site on backup.
    cmd = [PY, "-m", "bench", "fleet", "--sizes", "20", "--rounds", "3", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = json.loads(out.read_text())["fleet"]["runs"]
    assert [(run["topology"], run["sites"]) for run in runs] == [("single", 20), ("bridge", 20)]
    for run in runs:
        assert [(x["cmd"], x["reached"], x["answered"], x["ok"]) for x in run["rounds"]] == [
            ("failover", 20, 20, 20),
            ("release", 20, 20, 20),
            ("failover", 20, 20, 20),
        ], run["rounds"]
        assert run["answered_all"] and run["answer_s"]["max"] is not None
        for status in run["status"]:
            assert status["complete"], status
            assert status["summary"]["sites"] == status["summary"]["online"] == status["summary"]["backup"] == 20
        # failoverctl's own fleet command returned once every online site had answered, long before --wait.
        ctl = run["failoverctl_command"]
        assert (ctl["exit"], ctl["replies"], ctl["ok"]) == (0, 20, 20) and ctl["s"] < 50, ctl
    assert "## Fleet control" in r.stdout and "| bridge | 20 |" in r.stdout
    assert (
        "fo-bench-fleet"
        not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    )
