"""The dual-stack lab end to end, without failoverd: IPv4 and IPv6 through every uplink (carrier C's NAT64 too),
and the internet node's servers answering both families."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from lab.netns import wait_for
from lab.topology import ROOT, Lab

PY = sys.executable
SERVER4, SERVER6 = "198.19.1.10:9000", "[2001:db8:19:1::10]:9000"
NAT64 = "2001:db8:64::"  # carrier C's prefix: 198.19.1.10 is 2001:db8:64::c613:10a (RFC 6052 2.2)
INTERNET4, INTERNET6 = "198.19.0.0/16", "2001:db8:19::/48"


@dataclass(frozen=True)
class Path:
    """An uplink as the gateway's routes use it, and the source address the server sees from it."""

    iface: str
    via4: str | None
    via6: str
    seen4: str  # after the gateway's NAT (and the modem's, or carrier C's NAT64)
    seen6: str


PATHS = {
    "fiber": Path("fiber0", "198.18.1.1", "2001:db8:1::1", "198.18.1.2", "2001:db8:1::2"),
    "mobile-a": Path("mob1", "198.18.2.1", "2001:db8:2::1", "198.18.2.2", "2001:db8:2::2"),
    "mobile-b": Path("mob2", "198.18.3.1", "2001:db8:3::1", "198.18.3.2", "2001:db8:3::2"),
    "sat": Path("sat0", "198.18.4.1", "2001:db8:4::1", "198.18.4.2", "2001:db8:4::2"),
    # The modem, its data path on carrier A: masqueraded again as its radio address.
    "modem": Path("wwan0", "198.18.5.1", "2001:db8:5::1", "198.18.6.2", "2001:db8:6::2"),
    # IPv6-only: IPv4 destinations by the NAT64 prefix, seen from carrier C's NAT address.
    "mobile-c": Path("mob3", None, "2001:db8:8::1", "198.18.108.1", "2001:db8:8::2"),
}


def nat64(v4: str) -> str:
    a, b, c, d = (int(x) for x in v4.split("."))
    return f"{NAT64}{a << 8 | b:x}:{c << 8 | d:x}"


@pytest.fixture
def via(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Path]:
    """The gateway routes the internet (and carrier C's NAT64 prefix) by one uplink, for one test."""
    name: str = request.param
    p = PATHS[name]
    topo = lab.topo
    if name == "sat":  # a cold standby: off until someone needs it
        topo.sh("gw", "ip", "link", "set", "dev", "sat0", "up")
    if name == "modem":  # what the simulator does while a bearer is up on carrier A (lab/modem.json)
        topo.sh("modem", "ip", "route", "replace", "default", "via", "198.18.6.1")
        topo.sh("modem", "ip", "-6", "route", "replace", "default", "via", "2001:db8:6::1")
    routes = [("-6", INTERNET6, p.via6)] + ([("-4", INTERNET4, p.via4)] if p.via4 else [("-6", f"{NAT64}/96", p.via6)])
    for fam, prefix, hop in routes:
        topo.sh("gw", "ip", fam, "route", "replace", prefix, "via", hop, "dev", p.iface)
    try:
        yield p
    finally:
        for fam, prefix, _ in routes:
            topo.sh("gw", "ip", fam, "route", "del", prefix, check=False)
        if name == "sat":
            topo.sh("gw", "ip", "link", "set", "dev", "sat0", "down")
        if name == "modem":
            topo.sh("modem", "ip", "route", "replace", "blackhole", "default")
            topo.sh("modem", "ip", "-6", "route", "replace", "blackhole", "default")


def streams(lab: Lab, dsts: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Half a second of lab/traffic.py at 200 packets/s from dispatch to each server (name → address:port as
    the sender writes it; the receiver binds SERVER4 or SERVER6): each receiver's summary."""
    topo = lab.topo
    recvs = {}
    for name, dst in dsts.items():
        bind = SERVER6 if dst.startswith("[") and NAT64 not in dst else SERVER4
        recvs[name] = subprocess.Popen(
            ["ip", "netns", "exec", topo.ns("inet"), PY, "-m", "lab.traffic", "recv", "--bind", bind,
             "--duration", "2.5"], stdout=subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
    try:
        wait_for(lambda: topo.sh("inet", "ss", "-lun").stdout.count(":9000 ") >= len(dsts), 10, what="receivers")
        send = ["ip", "netns", "exec", topo.ns("dispatch"), PY, "-m", "lab.traffic", "send", "--rate", "200"]
        senders = [
            subprocess.Popen([*send, "--duration", "0.5", "--dst", dst], stdout=subprocess.DEVNULL, cwd=ROOT)
            for dst in dsts.values()
        ]
        for s in senders:
            assert s.wait(20) == 0
        return {name: json.loads(r.communicate(timeout=20)[0]) for name, r in recvs.items()}
    finally:
        for r in recvs.values():
            if r.poll() is None:
                r.kill()
                r.wait()


@pytest.mark.parametrize("via", list(PATHS), indirect=True)
def test_both_families_pass_through_every_uplink(lab: Lab, via: Path) -> None:
    """Each family's stream arrives whole, from the address of the uplink's NAT: nothing leaked by another
    uplink, nothing from the LAN's own addresses (the gateway masquerades IPv6 as it does IPv4)."""
    dst4 = SERVER4 if via.via4 else f"[{nat64('198.19.1.10')}]:9000"
    got = streams(lab, {"ipv4": dst4, "ipv6": SERVER6})
    for fam, seen in (("ipv4", via.seen4), ("ipv6", via.seen6)):
        s = got[fam]
        assert s["received"] >= 95 and s["lost"] == 0, (fam, s)
        assert s["by_source"] == {seen: s["received"]}, (fam, s["by_source"])


CLIENTS = r"""
import json, socket, struct, sys, urllib.request

def udp(addr, port, payload, timeout=2.0):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, (addr, port))
        return s.recvfrom(2048)[0]

def echo(addr):
    return udp(addr, 7, b"fo-echo") == b"fo-echo"

def dns(addr, qtype):
    q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example\x00" + struct.pack("!HH", qtype, 1)
    r = udp(addr, 53, q)
    if struct.unpack_from("!H", r, 6)[0] != 1:
        return None
    rdata = r[-16:] if qtype == 28 else r[-4:]
    return socket.inet_ntop(socket.AF_INET6 if qtype == 28 else socket.AF_INET, rdata)

def ntp(addr):
    r = udp(addr, 123, b"\x23" + b"\x00" * 47)  # version 4, mode 3 (client)
    return {"mode": r[0] & 7, "stratum": r[1]}

def http(addr):
    host = f"[{addr}]" if ":" in addr else addr
    with urllib.request.urlopen(f"http://{host}/", timeout=3) as resp:
        return resp.status

out = {}
for kind, addr, *rest in json.loads(sys.argv[1]):
    key = " ".join([kind, addr, *map(str, rest)])
    try:
        out[key] = dns(addr, rest[0]) if kind == "dns" else {"echo": echo, "ntp": ntp, "http": http}[kind](addr)
    except OSError as exc:
        out[key] = f"error: {exc}"
print(json.dumps(out))
"""


def ask(lab: Lab, questions: list[list[Any]]) -> dict[str, Any]:
    """Each question ([kind, address, qtype for dns]) asked from dispatch: its answer, by the question's words."""
    r = lab.topo.sh("dispatch", PY, "-c", CLIENTS, json.dumps(questions), timeout=60)
    return dict(json.loads(r.stdout))


@pytest.mark.parametrize("via", ["fiber"], indirect=True)
def test_the_internet_answers_both_families(lab: Lab, via: Path) -> None:
    """Probe targets (UDP echo), DNS (A and AAAA on either family), HTTP and every NTP server (chronyd) on
    IPv4 and IPv6."""
    questions: list[list[Any]] = [["echo", f"198.19.0.{i}"] for i in (1, 2, 3)]
    questions += [["echo", f"2001:db8:19::{i}"] for i in (1, 2, 3)]
    questions += [["dns", a, t] for a in ("198.19.0.53", "2001:db8:19::53") for t in (1, 28)]
    questions += [["http", a] for a in ("198.19.0.80", "2001:db8:19::80")]
    questions += [["ntp", f"198.19.0.{n}"] for n in (123, 124, 125, 126)]
    questions += [["ntp", f"2001:db8:19::{n}"] for n in (123, 124, 125, 126)]
    got = ask(lab, questions)
    for a in ("198.19.0.1", "198.19.0.2", "198.19.0.3", "2001:db8:19::1", "2001:db8:19::2", "2001:db8:19::3"):
        assert got[f"echo {a}"] is True, got
    for a in ("198.19.0.53", "2001:db8:19::53"):
        assert got[f"dns {a} 1"] == "198.19.1.10" and got[f"dns {a} 28"] == "2001:db8:19:1::10", got
    assert got["http 198.19.0.80"] == 200 and got["http 2001:db8:19::80"] == 200, got
    for n in (123, 124, 125, 126):  # chronyd's `local stratum 3`, answering as a server (mode 4)
        for a in (f"198.19.0.{n}", f"2001:db8:19::{n}"):
            assert got[f"ntp {a}"] == {"mode": 4, "stratum": 3}, (a, got[f"ntp {a}"])


@pytest.mark.parametrize("via", ["mobile-c"], indirect=True)
def test_ipv4_servers_answer_through_carrier_cs_nat64(lab: Lab, via: Path) -> None:
    """An IPv6-only subscriber of carrier C reaches the IPv4 servers by the NAT64 prefix: echo (what a
    probe to 2001:db8:64::c613:1 asks), NTP and HTTP; IPv6 ones natively."""
    got = ask(
        lab,
        [
            ["echo", nat64("198.19.0.1")],
            ["ntp", nat64("198.19.0.123")],
            ["http", nat64("198.19.0.80")],
            ["echo", "2001:db8:19::1"],
            ["ntp", "2001:db8:19::124"],
        ],
    )
    assert got[f"echo {nat64('198.19.0.1')}"] is True, got
    assert got[f"ntp {nat64('198.19.0.123')}"] == {"mode": 4, "stratum": 3}, got
    assert got[f"http {nat64('198.19.0.80')}"] == 200, got
    assert got["echo 2001:db8:19::1"] is True and got["ntp 2001:db8:19::124"]["mode"] == 4, got
