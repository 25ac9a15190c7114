"""Every probe kind against real servers in a namespace: answers are timed, silence is a loss."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import ROOT

from lab.netns import Topology, wait_for

PY = sys.executable
POLICY = """
site: probes
uplinks:
  - name: up
    interface: up0
    next_hop: 198.18.1.1
    probes:
      - {kind: udp-echo, target: 198.19.0.1, timeout: 500ms}
      - {kind: icmp, target: 198.19.0.1, timeout: 500ms}
      - {kind: tcp, target: 198.19.0.80, port: 8080, timeout: 500ms}
      - {kind: tcp, target: 198.19.0.80, port: 9999, timeout: 500ms}
      - {kind: dns, target: 198.19.0.53, query: probe.example, record: A, timeout: 500ms}
      - {kind: http, url: "http://198.19.0.80:8080/", timeout: 1s}
      - {kind: arp-nexthop, timeout: 500ms}
  - name: dead
    interface: dead0
    next_hop: 198.18.2.1
    probes:
      - {kind: udp-echo, target: 198.19.0.99, timeout: 300ms}
      - {kind: icmp, target: 198.19.0.99, timeout: 300ms}
      - {kind: http, url: "http://198.19.0.80:8080/missing", timeout: 1s}
      - {kind: arp-nexthop, timeout: 300ms}
classes:
  - {name: all, path: [up, dead]}
"""


@pytest.fixture
def probelab(tmp_path: Path) -> Iterator[tuple[Topology, Path]]:
    topo = Topology(f"fo-p{int(time.monotonic() * 1000) % 100000}")
    try:
        topo.add_node("gw")
        topo.add_node("srv")
        topo.link("gw", "up0", "srv", "dn0")
        topo.link("gw", "dead0", "srv", "dn1")
        topo.addr("gw", "up0", "198.18.1.2/30")
        topo.addr("srv", "dn0", "198.18.1.1/30")
        topo.addr("gw", "dead0", "198.18.2.2/30")  # nobody answers for 198.18.2.1 on this link
        for a in ("198.19.0.1", "198.19.0.53", "198.19.0.80"):
            topo.addr("srv", "lo", f"{a}/32")
        topo.route("gw", "198.19.0.0/16", "via", "198.18.1.1")
        www = tmp_path / "www"
        www.mkdir()
        (www / "index.html").write_text("ok\n")
        topo.spawn("srv", [PY, "-m", "lab.responder", "--bind", "198.19.0.1"], cwd=ROOT)
        topo.spawn("srv", [PY, "-m", "lab.dnsd", "--bind", "198.19.0.53"], cwd=ROOT)
        topo.spawn("srv", [PY, "-m", "http.server", "--bind", "198.19.0.80", "--directory", str(www), "8080"])
        wait_for(lambda: "8080" in topo.sh("srv", "ss", "-ltn").stdout, 10, what="http server")
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY)
        yield topo, policy
    finally:
        topo.destroy()


def test_every_probe_kind(probelab: tuple[Topology, Path]) -> None:
    topo, policy = probelab
    time.sleep(0.3)
    r = subprocess.run([PY, "-m", "failoverd.cli", "probe", "--policy", str(policy), "--netns", topo.ns("gw"),
                        "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)  # fmt: skip
    rows = {(x["uplink"], x["probe"]): x for x in map(json.loads, r.stdout.splitlines())}
    assert r.returncode == 1, r.stderr  # the dead uplink's probes are lost
    up = {k[1]: v for k, v in rows.items() if k[0] == "up"}
    for probe, row in up.items():
        assert row["ok"], (probe, row)
        assert 0 < row["rtt_ms"] < 500, (probe, row)
    assert up["tcp:198.19.0.80:9999"]["detail"].startswith("refused")  # the host answered: the path works
    dead = {k[1]: v for k, v in rows.items() if k[0] == "dead"}
    assert len(dead) == 4 and not any(v["ok"] for v in dead.values()), dead
    assert "status 404" in dead["http:http://198.19.0.80:8080/missing"]["detail"]


ROUNDS = """
import asyncio, json, sys, time
from pathlib import Path
from failoverd.policy import load_policy
from failoverd.probes.kinds import open_session
from failoverd.probes.rounds import Rounds

async def main() -> None:
    pol = load_policy(Path(sys.argv[1]))
    up, dead = pol.uplinks["up"], pol.uplinks["dead"]
    spec = {(u.name, p.kind): p for u in (up, dead) for p in u.probes}
    fast = [("up", open_session(spec["up", "udp-echo"], up)), ("dead", open_session(spec["dead", "udp-echo"], dead))]
    odd = [("dead-icmp", open_session(spec["dead", "icmp"], dead))]
    ticks, seen = {"fast": [], "odd": []}, []
    stalled = []

    def deliver(results):
        now = time.monotonic()
        seen.extend([key, now, out.ok, out.rtt, out.detail] for key, out in results)
        if len(ticks["fast"]) == 8 and not stalled:  # the loop is busy just after a round went out
            stalled.append(now)
            time.sleep(0.12)

    def tick(grid):
        return lambda: ticks[grid].append(time.monotonic())

    tasks = [
        asyncio.create_task(Rounds(0.05, fast, deliver=deliver, on_tick=tick("fast")).run()),
        asyncio.create_task(Rounds(0.08, odd, deliver=deliver, on_tick=tick("odd")).run()),
    ]
    await asyncio.sleep(1.5)
    for t in tasks:
        t.cancel()
    print(json.dumps({"ticks": ticks, "seen": seen}))

asyncio.run(main())
"""


def test_rounds_judge_answers_by_kernel_stamps_and_losses_at_their_deadline(
    probelab: tuple[Topology, Path],
) -> None:
    """The daemon's round driver: answers read late keep their true round-trip time, and a silent
    target's probes are declared lost at their deadline, never before, also between ticks."""
    topo, policy = probelab
    time.sleep(0.3)
    out = json.loads(topo.sh("gw", PY, "-c", ROUNDS, str(policy), timeout=30).stdout)
    ticks, seen = out["ticks"], out["seen"]
    answers = [s for s in seen if s[0] == "up"]
    assert len(answers) >= 15 and all(ok for _, _, ok, _, _ in answers), answers
    # One round was read 120 ms late; stamped by the kernel, its answers still took well under that.
    assert all(0 < rtt < 0.05 for _, _, _, rtt, _ in answers), answers
    for key, timeout, grid in (("dead", 0.3, "fast"), ("dead-icmp", 0.3, "odd")):
        losses = [s for s in seen if s[0] == key]
        assert len(losses) >= 8 and not any(ok for _, _, ok, _, _ in losses), (key, losses)
        assert all(detail == "timeout" for *_, detail in losses), losses
        # The k-th loss is the k-th round's probe: judged no earlier than its deadline (less the 2 ms a
        # round may go out late and still count from its tick), and not much later.
        for (_, when, *_), sent in zip(losses, ticks[grid], strict=False):
            assert timeout - 0.0025 <= when - sent < timeout + 0.25, (key, when - sent)
