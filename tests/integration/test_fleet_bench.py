"""The fleet benchmark at 20 gateways on both topologies: every command reaches every simulated gateway and is
answered, the gateways really ran the engine (the last command shows in their statuses), and nothing is left
behind, also when the benchmark is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from netlab import PY, ROOT

from bench import fleet
from lab.netns import wait_for


def left_behind() -> list[str]:
    """Processes of a fleet benchmark still running: its brokers and workers."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout.splitlines()
    return [p for p in ps if str(fleet.WORK) in p or "bench.fleet worker" in p or "bench.fleet inner" in p]


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
        assert run["status_complete"]
        for status in run["status"]:
            assert status["complete"], status
            assert status["summary"]["sites"] == status["summary"]["online"] == status["summary"]["backup"] == 20
        # failoverctl's own fleet command returned once every online site had answered, long before --wait.
        ctl = run["failoverctl_command"]
        assert (ctl["exit"], ctl["replies"], ctl["ok"]) == (0, 20, 20) and ctl["s"] < 50, ctl
    assert "## Fleet control" in r.stdout and "| bridge | 20 |" in r.stdout
    assert fleet.NS not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not fleet.WORK.exists() and not left_behind()


def test_a_killed_fleet_benchmark_leaves_no_broker_or_gateway_running() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates the fo-bench-fleet network namespace")
    cmd = [PY, "-m", "bench", "fleet", "--sizes", "20", "--topologies", "bridge", "--rounds", "50"]
    bench = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert bench.stdout is not None
        for line in bench.stdout:  # until the commands flow: brokers, workers and the inner runner all up
            if "round 1:" in line:
                break
        assert len(left_behind()) >= 3, left_behind()
        bench.send_signal(signal.SIGKILL)  # no clean-up of its own can run
        bench.wait()
        wait_for(lambda: not left_behind(), 30, 0.2, what="the benchmark's processes to end")
    finally:
        if bench.poll() is None:
            bench.kill()
        subprocess.run(["ip", "netns", "del", fleet.NS], capture_output=True, check=False)  # as the next run would
