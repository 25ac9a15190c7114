"""A drill's canary on a real kernel: it reaches the dispatch service via the satellite; production stays on fiber."""

from __future__ import annotations

import json
import time
from typing import Any

from netlab import FIBER_NAT, PY, ROOT, SAT_NAT, SERVER, GatewayLab

from lab.netns import wait_for

# The lab policy's satellite drilled on demand, with a canary to the dispatch service (SERVER, where
# the traffic stream of the critical class goes too) over UDP echo.
DRILL = f"""
drills:
  - uplink: sat
    every: 1h                  # due an hour after start: only `failoverctl drill run` drills here
    retry_after: 1h
    rounds: 20                 # 2 s of the satellite's own 100 ms probes
    max_bytes: 1MB
    max_duration: 30s
    canary: {{target: {SERVER}, kind: udp-echo, interval: 200ms, timeout: 200ms, rounds: 15}}
"""

# Counters in the satellite ISP's router: canary probes and the critical stream crossing it.
SAT_COUNTERS = f"""table inet canary {{
 chain transit {{
  type filter hook forward priority 0;
  ip saddr {SAT_NAT} ip daddr {SERVER} udp dport 7 counter comment "canary"
  ip daddr {SERVER} udp dport 9000 counter comment "stream"
 }}
}}
"""


def counters(lab: GatewayLab, node: str) -> dict[str, int]:
    out = lab.topo.sh(node, "nft", "-j", "list", "table", "inet", "canary").stdout
    found: dict[str, int] = {}
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if rule:
            packets = next(int(x["counter"]["packets"]) for x in rule["expr"] if "counter" in x)
            found[rule["comment"]] = packets
    return found


def drill(lab: GatewayLab) -> dict[str, Any]:
    row: dict[str, Any] = lab.ctl("drill", "status")["drills"][0]
    return row


def run_drill(lab: GatewayLab, runs_before: int, table: str) -> tuple[dict[str, Any], list[str]]:
    """`failoverctl drill run sat` until its verdict; the verdict record and the canary table's routes
    seen while the drill was CHECKING."""
    reply = lab.ctl("drill", "run", "sat")
    assert reply["ok"], reply
    seen: list[str] = []

    def over() -> bool:
        row = drill(lab)
        if row["running"] is None:
            return True
        if row["running"]["phase"] == "checking" and row["canary"]["route"] == "via sat":
            seen.append(lab.topo.sh("gw", "ip", "route", "show", "table", table).stdout.strip())
        return False

    wait_for(over, 40, 0.05, "the drill to end")
    verdicts = [r for r in lab.ctl("history", "--last", "1000")["records"] if r["kind"] == "drill" and "verdict" in r]
    assert len(verdicts) == runs_before + 1, verdicts
    last: dict[str, Any] = verdicts[-1]
    return last, seen


def test_a_canary_crosses_the_satellite_to_the_dispatch_service_while_production_stays_on_fiber(
    gwlab: GatewayLab,
) -> None:
    gwlab.policy_path.write_text(gwlab.policy_path.read_text() + DRILL)
    gwlab.topo.nft("isp3", SAT_COUNTERS)
    service = gwlab.topo.spawn("inet", [PY, "-m", "lab.responder", "--bind", SERVER], cwd=ROOT)
    gwlab.start()
    gwlab.wait_class("critical", "fiber")
    wait_for(lambda: gwlab.uplink_state("mobile") == "UP", 10, what="mobile UP")
    status = drill(gwlab)
    canary = status["canary"]
    assert (canary["target"], canary["port"], canary["route"]) == (SERVER, 7, "unreachable")
    table = str(canary["table"])
    assert "unreachable default" in gwlab.topo.sh("gw", "ip", "route", "show", "table", table).stdout
    assert any(f"fwmark {canary['fwmark']}" in r and f"lookup {table}" in r for r in gwlab.rules())

    gwlab.start_traffic(rate=200)
    time.sleep(0.5)
    before = counters(gwlab, "isp3")
    assert before == {"canary": 0, "stream": 0}, before

    # 1. The dispatch service answers: the canary crosses the satellite to it, the drill passes.
    passed, routes = run_drill(gwlab, 0, table)
    assert passed["verdict"] == "pass", passed
    # While the drill checked the terminal, the canary's table was routed via it.
    assert routes and all(r.startswith("default via 198.18.4.1 dev sat0") for r in routes), routes
    assert SERVER in passed["cause"]["text"]
    seen = counters(gwlab, "isp3")
    assert seen["canary"] >= 15, seen  # the canary's probes, NATed to the satellite's address, crossed its ISP
    assert seen["stream"] == 0, seen  # not one packet of the critical stream went that way
    checks = {c["check"]: c for c in drill(gwlab)["last"]["checks"]}
    assert checks["canary"]["ok"], checks
    # Outside the drill the canary's table is unreachable again, and the terminal off.
    assert drill(gwlab)["canary"]["route"] == "unreachable"
    assert "unreachable default" in gwlab.topo.sh("gw", "ip", "route", "show", "table", table).stdout
    canary_records = [r for r in gwlab.ctl("history", "--last", "1000")["records"] if r["kind"] == "canary"]
    assert [r["to"] for r in canary_records] == ["sat", None], canary_records

    # 2. The service is down: the satellite still carries its own probes, but the canary gets no
    # answer, so the drill fails and says which target.
    gwlab.topo.stop(service)
    failed, _ = run_drill(gwlab, 1, table)
    assert failed["verdict"] == "fail", failed
    assert failed["cause"]["code"] == "drill-canary-failed"
    assert f"{SERVER}:7" in failed["cause"]["text"]
    alarms = [r for r in gwlab.ctl("history", "--last", "1000")["records"] if r["kind"] == "alarm"]
    assert any(a["cause"]["code"] == "drill-failed" and SERVER in a["cause"]["text"] for a in alarms), alarms
    assert counters(gwlab, "isp3")["canary"] >= seen["canary"] + 15
    assert counters(gwlab, "isp3")["stream"] == 0

    # Production never moved: the critical class stayed on fiber through both drills, every packet
    # of its stream left with the fiber's address.
    traffic = gwlab.stop_traffic()
    assert set(traffic["by_source"]) == {FIBER_NAT}, traffic["by_source"]
    decisions = [r for r in gwlab.ctl("history", "--last", "1000")["records"] if r["kind"] == "decision"]
    assert [d["uplink"] for d in decisions if d["class"] == "critical"] == ["fiber"], decisions
    assert gwlab.uplink_state("sat") == "STANDBY"
