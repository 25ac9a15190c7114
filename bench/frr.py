"""FRR (Debian's 8.4) as a peer: zebra, bfdd and bgpd per lab namespace, each with its own paths.

The gateway speaks eBGP to the fiber ISP and to carrier A, once per family: an IPv4 session between
the link's IPv4 addresses carrying the IPv4 unicast family, and an IPv6 session between its IPv6
addresses carrying IPv6 unicast, as a dual-stack ISP peers. Both ISPs announce the internet's prefix of
each family (198.19.0.0/16, 2001:db8:19::/48), and the gateway prefers the fiber by local preference.
With `bfd` every session is tied to a BFD session of its own family, 50 ms × 3 (FRR 8.4 has no
BFD-tracked static routes, so BGP is how FRR fails over on BFD); without it BGP's own keepalive/hold
timers (3 s / 9 s) are all that detects a dead neighbour.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lab.netns import LabError, Topology, wait_for

FRR_BIN = Path("/usr/lib/frr")
RUN = Path("/run/fo-bench/frr")

# node → (AS, router id, [(neighbour address, neighbour AS, preferred?)]); an IPv6 neighbour address is
# an IPv6 session, activated for IPv6 unicast only.
SESSIONS: dict[str, tuple[int, str, list[tuple[str, int, bool]]]] = {
    "gw": (
        65000,
        "198.18.1.2",
        [
            ("198.18.1.1", 65001, True),
            ("198.18.2.1", 65002, False),
            ("2001:db8:1::1", 65001, True),
            ("2001:db8:2::1", 65002, False),
        ],
    ),
    "isp-fiber": (65001, "198.18.1.1", [("198.18.1.2", 65000, False), ("2001:db8:1::2", 65000, False)]),
    "mno-a": (65002, "198.18.2.1", [("198.18.2.2", 65000, False), ("2001:db8:2::2", 65000, False)]),
}
# What each ISP announces, per address family: the internet's prefix, not a default, so that nothing
# but the bench's stream follows BGP on the gateway (the same prefix in both families, for a fair pair).
ANNOUNCED = {"ipv4": "198.19.0.0/16", "ipv6": "2001:db8:19::/48"}


def family(addr: str) -> str:
    return "ipv6" if ":" in addr else "ipv4"


def available() -> bool:
    return all((FRR_BIN / d).exists() for d in ("zebra", "bfdd", "bgpd")) and shutil.which("vtysh") is not None


def config(node: str, bfd: bool, keepalive: int, hold: int) -> str:
    asn, rid, neighbours = SESSIONS[node]
    lines = ["frr defaults traditional", f"hostname {node}", "!"]
    if bfd:
        lines += [
            "bfd",
            " profile fast",
            "  detect-multiplier 3",
            "  receive-interval 50",
            "  transmit-interval 50",
            " !",
            "!",
        ]
    lines += [f"router bgp {asn}", f" bgp router-id {rid}", " no bgp ebgp-requires-policy"]
    # Each session carries its own family only: without this an IPv6 session would also offer IPv4 unicast.
    lines += [" no bgp network import-check", " no bgp default ipv4-unicast"]
    for addr, peer_as, _ in neighbours:
        lines += [
            f" neighbor {addr} remote-as {peer_as}",
            f" neighbor {addr} timers {keepalive} {hold}",
            # Reconnect at once after a fault is cleared (the default waits up to 120 s).
            f" neighbor {addr} timers connect 1",
        ]
        if bfd:
            lines.append(f" neighbor {addr} bfd profile fast")
    for af in ("ipv4", "ipv6"):
        lines.append(f" address-family {af} unicast")
        if node != "gw":
            lines.append(f"  network {ANNOUNCED[af]}")
        for addr, _, preferred in neighbours:
            if family(addr) != af:
                continue
            lines.append(f"  neighbor {addr} activate")
            if preferred:
                lines.append(f"  neighbor {addr} route-map PREFERRED in")
        lines.append(" exit-address-family")
    lines += ["!", "route-map PREFERRED permit 10", " set local-preference 200", "!"]
    return "\n".join(lines) + "\n"


@dataclass
class Frr:
    """FRR on the gateway and its two first ISPs; `start()` waits until every session is Established."""

    topo: Topology
    bfd: bool
    keepalive: int = 3
    hold: int = 9
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def dir(self, node: str) -> Path:
        return RUN / node

    def start(self, timeout: float = 60) -> None:
        if not available():
            raise LabError("FRR is not installed (scripts/bootstrap installs Debian's frr)")
        for node in SESSIONS:
            d = self.dir(node)
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            (d / "frr.conf").write_text(config(node, self.bfd, self.keepalive, self.hold))
            shutil.chown(d, "frr", "frr")
            shutil.chown(d / "frr.conf", "frr", "frr")
            daemons = ["zebra", "bfdd", "bgpd"] if self.bfd else ["zebra", "bgpd"]
            for daemon in daemons:
                cmd = [
                    str(FRR_BIN / daemon),
                    "-f",
                    str(d / "frr.conf"),
                    "-i",
                    str(d / f"{daemon}.pid"),
                    "-z",
                    str(d / "zserv.api"),
                    "--vty_socket",
                    str(d),
                    "-P",
                    "0",
                    "-u",
                    "frr",
                    "-g",
                    "frr",
                    "--log",
                    f"file:{d / (daemon + '.log')}",
                ]
                if daemon == "bfdd":
                    cmd += ["--bfdctl", str(d / "bfdd.sock")]
                self.procs.append(self.topo.spawn(node, cmd))
                if daemon == "zebra":
                    wait_for((d / "zserv.api").exists, 10, what=f"zebra in {node}")
        wait_for(self.established, timeout, interval=0.2, what="FRR's BGP sessions to be Established")

    def vtysh(self, node: str, command: str) -> str:
        r = self.topo.sh(node, "vtysh", "--vty_socket", str(self.dir(node)), "-c", command, check=False, timeout=10)
        return r.stdout

    def established(self) -> bool:
        """Every session of both families Established with the ISP's prefix received (and, with BFD,
        a BFD session up for each)."""
        want = {addr for addr, _, _ in SESSIONS["gw"][2]}
        up: set[str] = set()
        for af in ("ipv4", "ipv6"):
            try:
                peers = json.loads(self.vtysh("gw", f"show bgp {af} unicast summary json") or "{}").get("peers", {})
            except ValueError:
                return False
            up |= {a for a, p in peers.items() if p.get("state") == "Established" and p.get("pfxRcd", 0) >= 1}
        if not want <= up:
            return False
        if self.bfd:
            try:
                sessions = json.loads(self.vtysh("gw", "show bfd peers json") or "[]")
            except ValueError:
                return False
            return sum(1 for s in sessions if s.get("status") == "up") >= len(want)
        return True

    def stop(self) -> None:
        for p in reversed(self.procs):
            self.topo.stop(p, signal.SIGTERM, timeout=5)
        self.procs.clear()
        # zebra removes its routes when it ends; make sure nothing of FRR's is left for the next peer.
        self.topo.sh("gw", "ip", "route", "flush", "proto", "bgp", check=False)
        self.topo.sh("gw", "ip", "-6", "route", "flush", "proto", "bgp", check=False)
