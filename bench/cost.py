"""failoverd's own cost: resident memory and CPU share at 4 uplinks × 2 targets × 20 probes/s.

Run by `python -m bench cost` (root) on the lab: the daemon runs bench/policies/cost.yaml on the
gateway; CPU is the time the daemon's threads ran, from /proc/<pid>/schedstat (nanoseconds, not
10 ms ticks) over wall time, in % of one core; memory from /proc/<pid>/status, and the probe rate
from the daemon's own per-target counters (so a daemon that probed less than asked would show it).
Those counters are asked for just outside each CPU window: answering `status` is not the load
being measured. Phases: idle, the fiber's carrier lost (a
failover and the steady state after it), and the fiber back (recovery and preemption). Beside it,
the floor: failoverd's probe sessions alone at the same rate (bench/prober.py), no engine or kernel.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.failover import Faults
from failoverd.ctl import Client
from lab.netns import LabError, wait_for
from lab.scenario import PY, launch_failoverd
from lab.topology import ROOT, Lab

POLICY = ROOT / "bench" / "policies" / "cost.yaml"


def cpu_seconds(pid: int) -> float:
    """Time on a CPU of all the process's threads (schedstat's first field, ns)."""
    return sum(int((task / "schedstat").read_text().split()[0]) for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9


def memory_mib(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def probes_done(client: Client) -> int:
    st = client.request({"cmd": "status"})
    return sum(t["probes"] for u in st["uplinks"] for t in u["targets"])


def measure(pid: int, client: Client, phase: str, seconds: float) -> dict[str, Any]:
    p0 = probes_done(client)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    p1 = probes_done(client)
    mem = memory_mib(pid)
    return {
        "phase": phase,
        "seconds": round(t1 - t0, 1),
        "cpu_percent": round((cpu1 - cpu0) / (t1 - t0) * 100, 2),
        "rss_mib": round(mem["VmRSS"], 1),
        "peak_rss_mib": round(mem["VmHWM"], 1),
        "probes_per_s": round((p1 - p0) / (t1 - t0), 1),
    }


def run(lab: Lab, out: Path, idle_s: float = 30.0, phase_s: float = 15.0) -> dict[str, Any]:
    topo = lab.topo
    faults = Faults(topo)
    faults.clear()
    topo.sh("gw", "ip", "link", "set", "dev", "sat0", "up")  # the lab keeps the satellite cold
    out.mkdir(parents=True, exist_ok=True)
    daemon = launch_failoverd(topo.ns("gw"), POLICY, out)
    client = Client(str(out / "failoverd.sock"), timeout=2)
    try:

        def all_up() -> bool:
            st = client.request({"cmd": "status"})
            return all(u["usable"] for u in st["uplinks"]) and st["classes"][0]["uplink"] == "fiber"

        wait_for(all_up, 30, what="all four uplinks up, critical on the fiber")
        time.sleep(5)  # past start-up: imports, first audit, first clock round
        phases = [measure(daemon.pid, client, "idle", idle_s)]
        faults.apply("carrier", 0)
        phases.append(measure(daemon.pid, client, "fiber carrier lost", phase_s))
        st = client.request({"cmd": "status"})
        if st["classes"][0]["uplink"] == "fiber":
            raise LabError("the cost benchmark's failover did not happen")
        faults.clear()
        phases.append(measure(daemon.pid, client, "fiber back", phase_s))
        # every probe of cost.yaml runs at 50 ms
        expected = sum(len(u["targets"]) / 0.05 for u in client.request({"cmd": "status"})["uplinks"])
    finally:
        daemon.terminate()
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
    try:
        cmd = ["env", f"PYTHONPATH={ROOT}", PY, "-m", "bench.prober", str(POLICY), str(idle_s)]
        floor = json.loads(topo.sh("gw", *cmd, timeout=idle_s + 30).stdout)
    finally:
        topo.sh("gw", "ip", "link", "set", "dev", "sat0", "down")
    return {
        "policy": str(POLICY.relative_to(ROOT)),
        "load": f"4 uplinks × 2 targets × 20 probes/s = {expected:.0f} probes/s, clock checks every 2 s",
        "phases": phases,
        "probe_floor": floor,
    }
