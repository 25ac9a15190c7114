"""The lab's IPv6 parts that need no namespace: DNS AAAA answers, stream addresses, family faults, modem routes."""

from __future__ import annotations

import socket
import struct

from lab import scenario as sc
from lab.dnsd import answer
from lab.mmsim import DataPath, next_hops
from lab.traffic import _addr, _family, _source


def _query(qtype: int) -> bytes:
    return struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x05probe\x07example\x00" + struct.pack("!HH", qtype, 1)


def test_dnsd_answers_aaaa_when_given_an_ipv6_address() -> None:
    a = answer(_query(1), "198.19.1.10", "2001:db8:19:1::10")
    aaaa = answer(_query(28), "198.19.1.10", "2001:db8:19:1::10")
    assert a is not None and aaaa is not None
    assert struct.unpack_from("!H", a, 6)[0] == 1 and a[-4:] == socket.inet_aton("198.19.1.10")
    assert struct.unpack_from("!H", aaaa, 6)[0] == 1
    assert aaaa[-16:] == socket.inet_pton(socket.AF_INET6, "2001:db8:19:1::10")
    assert struct.unpack_from("!HH", aaaa, len(aaaa) - 26)[:2] == (28, 1)  # TYPE AAAA, CLASS IN
    # Without one, an AAAA query is answered with no record (NOERROR, as before).
    empty = answer(_query(28), "198.19.1.10")
    assert empty is not None and struct.unpack_from("!H", empty, 6)[0] == 0


def test_stream_addresses_of_either_family() -> None:
    assert _addr("[2001:db8:19:1::10]:9000") == ("2001:db8:19:1::10", 9000)
    assert _addr("198.19.1.10:9000") == ("198.19.1.10", 9000)
    assert _family("2001:db8:19:1::10") == socket.AF_INET6 and _family("198.19.1.10") == socket.AF_INET
    assert _source("::ffff:198.18.1.2") == "198.18.1.2"
    assert _source("2001:db8:1::2") == "2001:db8:1::2"


def test_the_ipv6_stream_measures_the_ipv6_twin_of_critical() -> None:
    path = sc.STREAMS["critical6"]
    assert (path.node, path.cls, path.family) == ("dispatch", "critical/v6", "ipv6")
    assert sc.STREAMS["critical"].family == "ipv4"
    # Off unless a scenario asks for it: the IPv4 scenarios run as before.
    assert sc.Traffic().critical6 is None
    assert sc.load_scenario("fiber-cut-v6").traffic.critical6 is not None


def test_a_fault_of_one_family() -> None:
    step = sc.Step(at=1, do="blackhole", uplink="fiber", family="ipv6")
    assert sc._family_match(step) == "meta nfproto ipv6 "
    assert sc._family_match(sc.Step(at=1, do="blackhole", uplink="fiber")) == ""


def test_modem_routes_follow_each_family_named() -> None:
    both = DataPath({"20408": ["198.18.6.1", "2001:db8:6::1"], "20416": "198.18.7.1"})
    assert both.families == ["-4", "-6"]
    assert DataPath({"20408": "198.18.6.1"}).families == ["-4"]  # an IPv4-only config leaves IPv6 alone
    assert next_hops("198.18.6.1") == ("198.18.6.1",)
    assert next_hops(["198.18.6.1", "2001:db8:6::1"]) == ("198.18.6.1", "2001:db8:6::1")


def test_a_stream_that_never_comes_back_counts_its_silence() -> None:
    """A family left with nowhere to go ends dead: the silence until the sender stopped is its outage, and
    what was sent after the last arrival is lost."""
    alive = {"received": 100, "max_gap_ms": 3.0, "lost": 0, "last_t": 9.999, "last_seq": 99}
    assert sc.with_silent_tail(alive, 10.0, 100)["max_gap_ms"] == 3.0
    assert sc.with_silent_tail(alive, 10.0, 100)["lost"] == 0
    dead = {"received": 40, "max_gap_ms": 3.0, "lost": 0, "last_t": 4.0, "last_seq": 39}
    got = sc.with_silent_tail(dead, 10.0, 100)
    assert got["max_gap_ms"] == 6000.0 and got["tail_ms"] == 6000.0 and got["lost"] == 60
    # Late arrivals (a satellite's delay) after the sender stopped are no silence.
    assert sc.with_silent_tail({**alive, "last_t": 10.3}, 10.0, None)["max_gap_ms"] == 3.0
    assert sc.with_silent_tail({"received": 0, "max_gap_ms": None}, 10.0, 5)["max_gap_ms"] is None
