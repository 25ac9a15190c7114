"""Every probe kind over IPv6 in namespaces: it leaves by the uplink it judges or not at all, and fails with it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netlab import ROOT

from lab.netns import Topology, wait_for

PY = sys.executable
# Uplink "up" (up0) reaches the targets through srv's dn0. The gateway also has another uplink (other0,
# to srv's dn1) that reaches them just as well, and the main table prefers it, as it does when that
# uplink's router advertisements brought the IPv6 default route.
POLICY = """
site: probes6
uplinks:
  - name: up
    interface: up0
    next_hop: 2001:db8:1::1          # IPv6 only: with an IPv4 next_hop and next_hop6 it would be two uplinks
    probes:
      - {kind: udp-echo, target: "2001:db8:ff::1", timeout: 500ms}
      - {kind: icmp, target: "2001:db8:ff::1", timeout: 500ms}
      - {kind: tcp, target: "2001:db8:ff::80", port: 8080, timeout: 500ms}
      - {kind: tcp, target: "2001:db8:ff::80", port: 9999, timeout: 500ms}
      - {kind: dns, target: "2001:db8:ff::53", query: probe.example, record: AAAA, timeout: 500ms}
      - {kind: http, url: "http://[2001:db8:ff::80]:8080/", timeout: 1s}
      - {kind: ndp-nexthop, timeout: 500ms}
      - {kind: ndp-nexthop, target: "fe80::1", timeout: 500ms}
      - {kind: icmp, target: "fe80::1", timeout: 500ms}
classes:
  - {name: all, path: [up]}
"""
NDP = {"ndp-nexthop:2001:db8:1::1", "ndp-nexthop:fe80::1"}
LINK = {"icmp:fe80::1"}  # the router itself, on the link: the uplink's device is the address's zone
PATH = {
    "udp-echo:2001:db8:ff::1:7",
    "icmp:2001:db8:ff::1",
    "tcp:2001:db8:ff::80:8080",
    "tcp:2001:db8:ff::80:9999",
    "dns:2001:db8:ff::53",
    "http:http://[2001:db8:ff::80]:8080/",
}
COUNTERS = """table inet probes6 {
 counter via_up {}
 counter via_other {}
 chain in {
  type filter hook input priority 0;
  iifname "dn0" ip6 daddr 2001:db8:ff::/48 counter name "via_up"
  iifname "dn1" ip6 daddr 2001:db8:ff::/48 counter name "via_other"
 }
}
"""


@pytest.fixture
def lab6(tmp_path: Path) -> Iterator[tuple[Topology, Path]]:
    topo = Topology(f"fo-q{int(time.monotonic() * 1000) % 100000}")
    try:
        for node in ("gw", "srv"):
            topo.add_node(node)
            for conf in ("all", "default"):  # addresses usable at once, not after duplicate detection
                topo.sh(node, "sysctl", "-qw", f"net.ipv6.conf.{conf}.accept_dad=0")
        topo.link("gw", "up0", "srv", "dn0")
        topo.link("gw", "other0", "srv", "dn1")
        for node, ifname, cidr in (
            ("gw", "up0", "2001:db8:1::2/64"),
            ("srv", "dn0", "2001:db8:1::1/64"),
            ("srv", "dn0", "fe80::1/64"),  # a router's usual link-local address
            ("gw", "other0", "2001:db8:2::2/64"),
            ("srv", "dn1", "2001:db8:2::1/64"),
            ("srv", "lo", "2001:db8:ff::1/128"),
            ("srv", "lo", "2001:db8:ff::53/128"),
            ("srv", "lo", "2001:db8:ff::80/128"),
        ):
            topo.sh(node, "ip", "-6", "addr", "add", cidr, "dev", ifname, "nodad")
        topo.addr("gw", "up0", "198.18.1.2/30")
        topo.addr("srv", "dn0", "198.18.1.1/30")
        for via, dev, metric in (("2001:db8:2::1", "other0", "100"), ("2001:db8:1::1", "up0", "200")):
            topo.sh("gw", "ip", "-6", "route", "add", "2001:db8:ff::/48", "via", via, "dev", dev, "metric", metric)
        topo.nft("srv", COUNTERS)
        www = tmp_path / "www"
        www.mkdir()
        (www / "index.html").write_text("ok\n")
        topo.spawn("srv", [PY, "-m", "lab.responder", "--bind", "2001:db8:ff::1"], cwd=ROOT)
        topo.spawn("srv", [PY, "-m", "lab.dnsd", "--bind", "2001:db8:ff::53"], cwd=ROOT)
        topo.spawn("srv", [PY, "-m", "http.server", "--bind", "2001:db8:ff::80", "--directory", str(www), "8080"])
        wait_for(lambda: ":8080" in topo.sh("srv", "ss", "-ltn").stdout, 10, what="http server")
        wait_for(lambda: ":53 " in topo.sh("srv", "ss", "-lun").stdout, 10, what="dns server")
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY)
        yield topo, policy
    finally:
        topo.destroy()


def probe(topo: Topology, policy: Path) -> dict[str, dict[str, Any]]:
    """`failoverd probe --json` in the gateway's namespace: each probe's row, by its key."""
    r = subprocess.run([PY, "-m", "failoverd.cli", "probe", "--policy", str(policy), "--netns", topo.ns("gw"),
                        "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)  # fmt: skip
    assert r.returncode in (0, 1), r.stderr
    return {x["probe"]: x for x in map(json.loads, r.stdout.splitlines())}


def counted(topo: Topology, name: str) -> int:
    out = json.loads(topo.sh("srv", "nft", "-j", "list", "counter", "inet", "probes6", name).stdout)
    return int(next(item["counter"]["packets"] for item in out["nftables"] if "counter" in item))


def test_every_kind_answers_over_ipv6_through_the_uplink_it_judges(lab6: tuple[Topology, Path]) -> None:
    topo, policy = lab6
    rows = probe(topo, policy)
    assert set(rows) == PATH | NDP | LINK
    for key, row in rows.items():
        assert row["ok"], (key, row)
        assert 0 < row["rtt_ms"] < 500, (key, row)
    assert rows["tcp:2001:db8:ff::80:9999"]["detail"].startswith("refused")
    # Every probe came in on the uplink's link, none by the route the main table prefers.
    assert counted(topo, "via_up") >= len(PATH)
    assert counted(topo, "via_other") == 0


def test_a_blackholed_path_fails_every_kind_but_the_next_hop_check(lab6: tuple[Topology, Path]) -> None:
    """The ISP's router answers on the link but passes nothing on: the probes beyond it fail, and do not
    come back alive by the other uplink's route, while ndp-nexthop still finds the router."""
    topo, policy = lab6
    topo.nft(
        "srv",
        "table inet fault {\n chain in {\n type filter hook input priority -10;\n"
        ' iifname "dn0" ip6 daddr 2001:db8:ff::/48 drop\n }\n}\n',
    )
    rows = probe(topo, policy)
    for key in PATH:
        assert not rows[key]["ok"], (key, rows[key])
    for key in NDP | LINK:
        assert rows[key]["ok"], (key, rows[key])
    assert counted(topo, "via_other") == 0


def test_a_peer_gone_fails_every_kind(lab6: tuple[Topology, Path]) -> None:
    topo, policy = lab6
    topo.sh("srv", "ip", "link", "set", "dev", "dn0", "down")
    rows = probe(topo, policy)
    for key, row in rows.items():
        assert not row["ok"], (key, row)
    assert counted(topo, "via_other") == 0


def test_ndp_nexthop_fails_when_the_neighbour_stops_answering(lab6: tuple[Topology, Path]) -> None:
    topo, policy = lab6
    assert all(probe(topo, policy)[key]["ok"] for key in NDP)
    # The router loses its global address: solicitations for it go unanswered, its link-local still answers.
    topo.sh("srv", "ip", "-6", "addr", "del", "2001:db8:1::1/64", "dev", "dn0")
    rows = probe(topo, policy)
    assert rows["ndp-nexthop:2001:db8:1::1"]["detail"] == "timeout", rows
    assert rows["ndp-nexthop:fe80::1"]["ok"], rows
    # It stops answering solicitations at all.
    topo.nft(
        "srv",
        "table inet fault {\n chain in {\n type filter hook input priority -10;\n"
        " icmpv6 type nd-neighbor-solicit drop\n }\n}\n",
    )
    rows = probe(topo, policy)
    for key in NDP:
        assert rows[key]["detail"] == "timeout", (key, rows[key])


ROUNDS = """
import asyncio, json, sys
from pathlib import Path
from failoverd.policy import load_policy
from failoverd.probes.kinds import open_session
from failoverd.probes.rounds import Rounds

async def main() -> None:
    up = load_policy(Path(sys.argv[1])).uplinks["up"]
    sessions = [(p.key, open_session(p, up)) for p in up.probes if p.kind in ("icmp", "udp-echo", "dns", "ndp-nexthop")]
    seen = []
    deliver = lambda results: seen.extend((key, out.ok, out.rtt, out.detail) for key, out in results)
    task = asyncio.create_task(Rounds(0.1, sessions, deliver=deliver).run())
    await asyncio.sleep(1.05)
    task.cancel()
    print(json.dumps(seen))

asyncio.run(main())
"""


def test_the_daemons_round_driver_judges_ipv6_answers(lab6: tuple[Topology, Path]) -> None:
    """The daemon sends datagram probes in rounds (probes/rounds.py), not one by one as `failoverd probe`:
    the NDP session's hop limit comes with the kernel's stamp from the same read. In the first round
    the kernel resolves the router for the other probes as ndp-nexthop asks for it: the kernel's
    answer, queued before our solicitation went out, must not pass for ours (it was timed when read,
    a round later)."""
    topo, policy = lab6
    seen = json.loads(topo.sh("gw", PY, "-c", ROUNDS, str(policy), timeout=30).stdout)
    by_key: dict[str, list[tuple[bool, float]]] = {}
    for key, ok, rtt, _detail in seen:
        by_key.setdefault(key, []).append((ok, rtt))
    assert set(by_key) == {"icmp:2001:db8:ff::1", "udp-echo:2001:db8:ff::1:7", "dns:2001:db8:ff::53"} | NDP | LINK
    for key, answers in by_key.items():
        assert len(answers) >= 8, (key, seen)
        # Read at the next round, 100 ms later, but timed by the kernel's stamps: well under that.
        assert all(ok and rtt < 0.05 for ok, rtt in answers), (key, answers)
