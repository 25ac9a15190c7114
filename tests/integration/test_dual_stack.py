"""A dual-stack gateway in namespaces: the fiber's IPv6 dies while its IPv4 works, and only IPv6 moves."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netlab import PY, ROOT, failoverctl, wait_answering

from failoverd.policy import load_policy
from lab.netns import Topology, wait_for

# gw's fiber0 (isp1) and mob1 (isp2) each carry both families; inet holds the targets and the server.
POLICY = """
site: dual-stack
uplinks:
  - name: fiber
    interface: fiber0
    next_hop: 198.18.1.1
    next_hop6: "2001:db8:1::1"
    probes:
      - {kind: icmp, target: 198.19.0.1, interval: 100ms, timeout: 300ms}
      - {kind: icmp, target: "2001:db8:ff::1", interval: 100ms, timeout: 300ms}
    health:
      down: {consecutive_losses: 3, loss_percent: 40, window: 2s}
      up: {successes: 5, hold_down: 1s}
  - name: mobile
    interface: mob1
    next_hop: 198.18.2.1
    next_hop6: "2001:db8:2::1"
    kind: cellular
    probes:
      - {kind: icmp, target: 198.19.0.1, interval: 100ms, timeout: 300ms}
      - {kind: icmp, target: "2001:db8:ff::1", interval: 100ms, timeout: 300ms}
classes:
  - name: bulk
    path: [fiber, mobile]
    preempt_delay: 2s
"""
FIBER4, MOBILE4 = "198.18.1.2", "198.18.2.2"
FIBER6, MOBILE6 = "2001:db8:1::2", "2001:db8:2::2"
SERVER4, SERVER6 = "198.19.1.10", "2001:db8:ff::10"


@pytest.fixture
def dual(tmp_path: Path) -> Iterator[Topology]:
    topo = Topology(f"fo-d{int(time.monotonic() * 1000) % 100000}")
    try:
        for node in ("gw", "isp1", "isp2", "inet", "lan"):
            topo.add_node(node)
            for conf in ("all", "default"):  # addresses usable at once, not after duplicate detection
                topo.sh(node, "sysctl", "-qw", f"net.ipv6.conf.{conf}.accept_dad=0")
        for a, a_if, b, b_if in (
            ("gw", "lan0", "lan", "eth0"),
            ("gw", "fiber0", "isp1", "down0"),
            ("gw", "mob1", "isp2", "down0"),
            ("isp1", "up0", "inet", "isp1"),
            ("isp2", "up0", "inet", "isp2"),
        ):
            topo.link(a, a_if, b, b_if)
        for node, ifname, cidr in (
            ("gw", "lan0", "198.18.10.1/24"),
            ("gw", "lan0", "2001:db8:10::1/64"),
            ("lan", "eth0", "198.18.10.10/24"),
            ("lan", "eth0", "2001:db8:10::10/64"),
            ("gw", "fiber0", f"{FIBER4}/30"),
            ("gw", "fiber0", f"{FIBER6}/64"),
            ("isp1", "down0", "198.18.1.1/30"),
            ("isp1", "down0", "2001:db8:1::1/64"),
            ("gw", "mob1", f"{MOBILE4}/30"),
            ("gw", "mob1", f"{MOBILE6}/64"),
            ("isp2", "down0", "198.18.2.1/30"),
            ("isp2", "down0", "2001:db8:2::1/64"),
            ("isp1", "up0", "198.18.101.1/30"),
            ("isp1", "up0", "2001:db8:101::1/64"),
            ("inet", "isp1", "198.18.101.2/30"),
            ("inet", "isp1", "2001:db8:101::2/64"),
            ("isp2", "up0", "198.18.102.1/30"),
            ("isp2", "up0", "2001:db8:102::1/64"),
            ("inet", "isp2", "198.18.102.2/30"),
            ("inet", "isp2", "2001:db8:102::2/64"),
            ("inet", "lo", "198.19.0.1/32"),
            ("inet", "lo", f"{SERVER4}/32"),
            ("inet", "lo", "2001:db8:ff::1/128"),
            ("inet", "lo", f"{SERVER6}/128"),
        ):
            topo.addr(node, ifname, cidr)
        for node, args in (
            ("lan", ("default", "via", "198.18.10.1")),
            ("lan", ("-6", "default", "via", "2001:db8:10::1")),
            ("isp1", ("default", "via", "198.18.101.2")),
            ("isp1", ("-6", "default", "via", "2001:db8:101::2")),
            ("isp2", ("default", "via", "198.18.102.2")),
            ("isp2", ("-6", "default", "via", "2001:db8:102::2")),
            ("inet", ("198.18.1.0/30", "via", "198.18.101.1")),
            ("inet", ("-6", "2001:db8:1::/64", "via", "2001:db8:101::1")),
            ("inet", ("198.18.2.0/30", "via", "198.18.102.1")),
            ("inet", ("-6", "2001:db8:2::/64", "via", "2001:db8:102::1")),
        ):
            if args[0] == "-6":
                topo.sh(node, "ip", "-6", "route", "replace", *args[1:])
            else:
                topo.route(node, *args)
        # NAT on each uplink, both families: the gateway's own configuration, not failoverd's.
        topo.nft(
            "gw",
            "table inet labnat {\n chain post {\n type nat hook postrouting priority srcnat;\n"
            ' oifname "fiber0" masquerade\n oifname "mob1" masquerade\n }\n}\n',
        )
        yield topo
    finally:
        topo.destroy()


def _status(sock: str) -> dict[str, Any]:
    return failoverctl(sock, "status")


def _where(sock: str, cls: str) -> str | None:
    c = next(c for c in _status(sock)["classes"] if c["name"] == cls)
    return str(c["uplink"]) if c["route"] == "via" else str(c["route"])


def _state(sock: str, uplink: str) -> str:
    return str(next(u["state"] for u in _status(sock)["uplinks"] if u["name"] == uplink))


def _route(topo: Topology, family: str, table: int) -> str:
    return topo.sh("gw", "ip", family, "route", "show", "table", str(table)).stdout.strip()


def test_the_fibers_ipv6_dies_and_only_ipv6_moves(dual: Topology, tmp_path: Path) -> None:
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(POLICY)
    policy = load_policy(policy_path)
    sock, log = str(tmp_path / "ctl.sock"), tmp_path / "failoverd.log"
    cmd = [PY, "-m", "failoverd.cli", "run", "--policy", str(policy_path), "--state-dir", str(tmp_path / "state")]
    cmd += ["--socket", sock, "--netns", dual.ns("gw"), "--log-json"]
    daemon = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    dual.procs.append(daemon)
    wait_answering(daemon, sock, log, "failoverd")
    for cls, uplink in (("bulk", "fiber"), ("bulk/v6", "fiber/v6")):
        wait_for(lambda c=cls, u=uplink: _where(sock, c) == u, 10, what=f"{cls} on {uplink}")

    # A UDP stream of each family from the LAN to the server, source-NATed by the uplink it leaves by.
    streams = {}
    for fam, server in (("4", SERVER4), ("6", f"[{SERVER6}]")):
        out = tmp_path / f"traffic{fam}.json"
        recv = dual.spawn(
            "inet", [PY, "-m", "lab.traffic", "recv", "--bind", f"{server}:9000", "--out", str(out)], cwd=ROOT
        )
        streams[fam] = (out, recv)
    time.sleep(0.3)
    senders = [
        dual.spawn("lan", [PY, "-m", "lab.traffic", "send", "--dst", f"{server}:9000", "--rate", "200"], cwd=ROOT)
        for server in (SERVER4, f"[{SERVER6}]")
    ]
    time.sleep(1)

    # isp1 forwards no IPv6 any more; IPv4 and the link itself (carrier, NDP) are untouched.
    dual.nft(
        "isp1",
        "table inet fault {\n chain transit {\n type filter hook forward priority -10;\n"
        " meta nfproto ipv6 drop\n }\n}\n",
    )
    wait_for(lambda: _where(sock, "bulk/v6") == "mobile/v6", 5, what="bulk/v6 on mobile/v6")
    assert _where(sock, "bulk") == "fiber"
    assert _state(sock, "fiber") == "UP" and _state(sock, "fiber/v6") == "DOWN"
    # The kernel: the IPv6 class table routes via the mobile, the IPv4 one still via the fiber.
    assert "dev mob1" in _route(dual, "-6", policy.classes["bulk/v6"].table)
    assert "dev fiber0" in _route(dual, "-4", policy.classes["bulk"].table)
    assert _route(dual, "-6", policy.classes["bulk"].table) == ""  # no IPv6 in the IPv4 class's table
    # The operator sees the link plainly.
    shown = subprocess.run(
        [PY, "-m", "failoverd.ctl", "--socket", sock, "status"], capture_output=True, text=True, cwd=ROOT, check=False
    ).stdout
    [line] = [ln for ln in shown.splitlines() if ln.startswith("fiber ") and "IPv4" in ln]
    assert "IPv4 UP" in line and "IPv6 DOWN" in line, shown
    time.sleep(1)

    for p in senders:
        dual.stop(p)
    time.sleep(0.3)
    result = {}
    for fam, (out, recv) in streams.items():
        dual.stop(recv)
        result[fam] = json.loads(out.read_text())
    # IPv4 never left the fiber; IPv6 did, and under the mobile's address: the IPv6 flow's conntrack
    # entry was flushed (conntrack -f ipv6), or its old NAT binding would have kept the fiber's.
    assert set(result["4"]["by_source"]) == {FIBER4}, result["4"]["by_source"]
    assert result["6"]["by_source"].get(MOBILE6, 0) > 100, result["6"]["by_source"]
    assert [s["to"] for s in result["6"]["switches"]] == [MOBILE6], result["6"]["switches"]

    # Mended: the IPv6 side comes back after its hold-down and the preempt delay.
    dual.nft("isp1", "delete table inet fault\n")
    wait_for(lambda: _where(sock, "bulk/v6") == "fiber/v6", 15, what="bulk/v6 back on fiber/v6")
    assert _where(sock, "bulk") == "fiber"
