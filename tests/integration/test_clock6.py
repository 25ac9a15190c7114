"""Clock sanity from IPv6 time servers: real chronyd on 2001:db8: addresses and one on the fiber's link, and a liar."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from dualstack import dual_stack, serve6
from netlab import PY, ROOT, GatewayLab

from failoverd.clock.sources import parse_tracking
from lab.netns import wait_for

HONEST = ("2001:db8:ff::123", "2001:db8:ff::124", "2001:db8:ff::125")
LIAR = "2001:db8:ff::126"
# On its own port: the lab's IPv4 chronyd hold [::]:123 as well, so the liar (no SO_REUSEADDR) cannot have 123.
LIAR_PORT = "1123"
ON_LINK = "fe80::123"  # the fiber ISP's router serves time on the link, as many do
SERVERS = """  servers:                 # IPv6 only: three honest chronyd, a liar, one on the fiber's link
    - {address: "2001:db8:ff::123", uplink: fiber, operator: op-a}
    - {address: "2001:db8:ff::124", uplink: mobile, operator: op-b}
    - {address: "2001:db8:ff::125", uplink: fiber, operator: op-c}
    - {address: "2001:db8:ff::126", port: 1123, uplink: mobile, operator: op-d}
    - {address: "fe80::123", uplink: fiber, operator: op-e}
"""
# What crosses each ISP toward the servers of either uplink: a query sent by the main table's choice
# (the fiber's route) instead of its uplink's would be counted on the wrong side.
COUNTERS = """table inet ntp6 {
 counter fiber_servers {}
 counter mobile_servers {}
 chain transit {
  type filter hook forward priority 0;
  ip6 daddr { 2001:db8:ff::123, 2001:db8:ff::125 } udp dport 123 counter name "fiber_servers"
  ip6 daddr { 2001:db8:ff::124, 2001:db8:ff::126 } udp dport { 123, 1123 } counter name "mobile_servers"
 }
}
"""


def chronyd(lab: GatewayLab, node: str, name: str, bind: str | None) -> None:
    """A real chronyd serving true time over IPv6 only (-6), on `bind` or (None) every address of `node`."""
    conf = lab.tmp / f"chrony6-{name}.conf"
    # -x: never touch the machine's clock; serve it as stratum 3.
    where = f"bindaddress {bind}\n" if bind else ""
    conf.write_text(f"{where}port 123\ncmdport 0\nlocal stratum 3\nallow all\npidfile {lab.tmp}/chrony6-{name}.pid\n")
    cmd = ["chronyd", "-6", "-x", "-d", "-u", "root", "-f", str(conf)]
    lab.topo.spawn(node, cmd, log=lab.tmp / f"time6-{name}.log")


@pytest.fixture
def lab6(gwlab: GatewayLab) -> Iterator[GatewayLab]:
    dual_stack(gwlab)
    for address in (*HONEST, LIAR):
        serve6(gwlab, address)
    for address in HONEST:
        chronyd(gwlab, "inet", address, address)
    liar = [PY, "-m", "lab.liar", "--bind", LIAR, "--port", LIAR_PORT, "--offset", "+1000"]
    gwlab.topo.spawn("inet", liar, cwd=ROOT, log=gwlab.tmp / "liar6.log")
    gwlab.topo.sh("isp1", "ip", "-6", "addr", "add", f"{ON_LINK}/64", "dev", "down0", "nodad")
    chronyd(gwlab, "isp1", "on-link", None)
    for isp in ("isp1", "isp2"):
        gwlab.topo.nft(isp, COUNTERS)
    text = gwlab.policy_path.read_text()
    gwlab.policy_path.write_text(re.sub(r"  servers:.*?\n(?=  chrony:)", SERVERS, text, count=1, flags=re.S))

    def serving() -> bool:
        inet, isp1 = (gwlab.topo.sh(node, "ss", "-Hlun").stdout for node in ("inet", "isp1"))
        listening = all(f"[{a}]:123" in inet for a in HONEST) and f"[{LIAR}]:{LIAR_PORT}" in inet
        return listening and ":123 " in isp1

    wait_for(serving, 10, what="time servers on IPv6")
    yield gwlab


def counted(lab: GatewayLab, isp: str) -> dict[str, int]:
    out = json.loads(lab.topo.sh(isp, "nft", "-j", "list", "counters", "table", "inet", "ntp6").stdout)
    return {c["counter"]["name"]: int(c["counter"]["packets"]) for c in out["nftables"] if "counter" in c}


def test_the_clock_is_judged_sane_from_ipv6_servers_and_the_liar_is_named(lab6: GatewayLab) -> None:
    lab6.start()
    wait_for(lambda: lab6.clock()["state"] == "sane", 20, what="clock SANE")
    # Judged sane once, now a few rounds (1 s apart) with every source's answer in.
    wait_for(lambda: all(s["state"] != "no answer" for s in lab6.clock()["sources"]), 10, what="every answer")

    def liar_via_mobile() -> bool:
        # A round made while mobile/v6 was not yet UP asked the liar over the fiber (as designed); the
        # report names the uplink of the last answer, so wait for a round made since.
        return any(s["server"] == LIAR and s["uplink"] == "mobile/v6" for s in lab6.clock()["sources"])

    wait_for(liar_via_mobile, 10, what="the liar asked over mobile/v6")
    rep = lab6.clock()
    verdicts = {s["server"]: s["state"] for s in rep["sources"]}
    assert verdicts == {**dict.fromkeys((*HONEST, ON_LINK), "agrees"), LIAR: "falseticker"}, rep
    liar = next(s for s in rep["sources"] if s["server"] == LIAR)
    assert abs(liar["offset_s"] - 1000) < 1 and liar["uplink"] == "mobile/v6", liar  # the IPv6 twin
    assert rep["state"] == "sane" and len(rep["consensus"]["classes"]) == 4, rep
    assert rep["disagreeing_uplinks"] == []  # an honest server answers over the mobile uplink too

    # Each query leaves by its own uplink: the mobile servers' never cross the fiber ISP, though the
    # main table's IPv6 default route is the fiber's. (Counted from now: in the first moments, while
    # the mobile uplink was not yet judged usable, its servers were asked over the fiber, as designed.)
    for isp in ("isp1", "isp2"):
        lab6.topo.sh(isp, "nft", "reset", "counters", "table", "inet", "ntp6")
    wait_for(lambda: counted(lab6, "isp2")["mobile_servers"] >= 4, 10, what="mobile servers asked over isp2")
    assert counted(lab6, "isp1")["mobile_servers"] == 0, counted(lab6, "isp1")
    assert counted(lab6, "isp1")["fiber_servers"] >= 4 and counted(lab6, "isp2")["fiber_servers"] == 0


def test_ipv6_time_servers_of_a_failed_uplink_are_asked_over_the_other(lab6: GatewayLab) -> None:
    """The fiber cut: its servers are asked over the mobile uplink's IPv6 twin (the on-link one is lost
    with its link), and the clock stays sane on three agreeing classes, the liar still named."""
    lab6.start()
    wait_for(lambda: lab6.clock()["state"] == "sane", 20, what="clock SANE")
    lab6.carrier(False)
    lab6.wait_class("critical", "mobile", timeout=5)

    def moved() -> bool:
        rows = {s["server"]: s for s in lab6.clock()["sources"]}
        return all(rows[a]["uplink"] == "mobile/v6" and rows[a]["state"] == "agrees" for a in HONEST)

    wait_for(moved, 10, what="the fiber's servers asked over mobile")
    rep = lab6.clock()
    rows = {s["server"]: s for s in rep["sources"]}
    assert rows[ON_LINK]["uplink"] == "fiber/v6" and rows[LIAR]["state"] == "falseticker", rows
    assert rep["state"] == "sane", rep


def test_chronyc_tracking_of_a_chronyd_following_an_ipv6_server_is_read(lab6: GatewayLab, tmp_path: Path) -> None:
    """chrony's own view, when it follows an IPv6 server: synchronised, the reference named by its address."""
    sock = tmp_path / "chronyd.sock"
    conf = tmp_path / "client.conf"
    conf.write_text(
        f"server {HONEST[0]} iburst minpoll -2 maxpoll -2\nbindcmdaddress {sock}\nport 0\n"
        f"pidfile {tmp_path}/client.pid\n"
    )
    lab6.topo.spawn("gw", ["chronyd", "-x", "-d", "-u", "root", "-f", str(conf)], log=tmp_path / "client.log")

    def tracking() -> str:
        return lab6.topo.sh("gw", "chronyc", "-h", str(sock), "-c", "tracking", check=False).stdout

    wait_for(lambda: (v := parse_tracking(tracking())) is not None and v.synced, 20, what="chronyd synchronised")
    view = parse_tracking(tracking())
    assert view is not None and view.ref == HONEST[0] and view.stratum == 4, view
