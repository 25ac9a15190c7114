"""arp-nexthop on a real link: the kernel's own ARP exchange, heard by the probe's socket, is not its answer."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.netns import Topology

PY = sys.executable
POLICY = """
site: arp
uplinks:
  - name: up
    interface: up0
    next_hop: 198.18.1.1
    probes: [{kind: arp-nexthop, timeout: 300ms}]
classes:
  - {name: all, path: [up]}
"""
# In the gateway's namespace: open the session, let the kernel resolve the router (a datagram to it
# needs its link-layer address), silence the router's ARP, then probe it once.
SCRIPT = """
import asyncio, json, socket, subprocess, sys
from pathlib import Path
from failoverd.policy import load_policy
from failoverd.probes.kinds import open_session

async def main() -> None:
    up = load_policy(Path(sys.argv[1])).uplinks["up"]
    session = open_session(up.probes[0], up)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x", ("198.18.1.1", 9))  # the kernel asks for the router's address to send it
    await asyncio.sleep(0.3)  # the router's reply is queued on our socket by now
    subprocess.run(["ip", "netns", "exec", sys.argv[2], "sysctl", "-qw", "net.ipv4.conf.dn0.arp_ignore=8"],
                   check=True)
    outcome = await session.probe()
    session.close()
    print(json.dumps({"ok": outcome.ok, "detail": outcome.detail}))

asyncio.run(main())
"""


@pytest.fixture
def link(tmp_path: Path) -> Iterator[tuple[Topology, Path]]:
    topo = Topology(f"fo-a{int(time.monotonic() * 1000) % 100000}")
    try:
        topo.add_node("gw")
        topo.add_node("isp")
        topo.link("gw", "up0", "isp", "dn0")
        topo.addr("gw", "up0", "198.18.1.2/30")
        topo.addr("isp", "dn0", "198.18.1.1/30")
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY)
        yield topo, policy
    finally:
        topo.destroy()


def test_a_router_silent_since_the_kernels_arp_exchange_is_not_taken_for_alive(
    link: tuple[Topology, Path],
) -> None:
    """The router answered the kernel's request a moment before the probe's went out, then fell
    silent. That answer sat queued on the probe's packet socket (it hears every ARP on the link);
    read as the probe's own, it passed a silent router as alive."""
    topo, policy = link
    out = json.loads(topo.sh("gw", PY, "-c", SCRIPT, str(policy), topo.ns("isp"), timeout=30).stdout)
    assert out == {"ok": False, "detail": "timeout"}, out
    # And the same router, answering again, is alive: the probe itself works.
    topo.sh("isp", "sysctl", "-qw", "net.ipv4.conf.dn0.arp_ignore=0")
    alive = SCRIPT.replace("arp_ignore=8", "arp_ignore=0")
    out = json.loads(topo.sh("gw", PY, "-c", alive, str(policy), topo.ns("isp"), timeout=30).stdout)
    assert out == {"ok": True, "detail": ""}, out
