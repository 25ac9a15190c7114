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
