"""IPv6 probe packets as built and as judged: ICMPv6 echo, Neighbor Solicitation and Advertisement."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv6Address
from types import SimpleNamespace
from typing import Any

import pytest

from failoverd.policy import parse_policy_text
from failoverd.policy.model import ProbeSpec
from failoverd.probes import icmp
from failoverd.probes.base import zoned
from failoverd.probes.ndp import HOP_LIMIT, advertises, hop_limit, solicitation, solicited_node

UPLINK: Any = SimpleNamespace(fwmark=0x100, interface="up0")
ROUTER = IPv6Address("2001:db8:1::1").packed
MAC = bytes.fromhex("02005e0000aa")


class QuietSocket(socket.socket):
    """A datagram socket that takes the ICMPv6 filter without the raw socket (and CAP_NET_RAW) it needs."""

    icmp6_filter = b""

    def setsockopt(self, level: int, option: int, value: Any, *rest: Any) -> None:
        if level == socket.IPPROTO_ICMPV6:
            self.icmp6_filter = value
            return
        super().setsockopt(level, option, value, *rest)


@pytest.fixture(autouse=True)
def no_privileges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(icmp, "marked_socket", lambda family, kind, proto, mark: QuietSocket(family, socket.SOCK_DGRAM))


def test_icmpv6_echo_is_built_for_the_kernel_and_only_its_reply_counts() -> None:
    s = icmp.IcmpSession(ProbeSpec("icmp", "2001:DB8:FF::1", 1.0, 0.5), UPLINK)
    try:
        assert s.device == b"up0"  # bound to the uplink's device before each probe (base.probe_device)
        payload, dest, seq = s.request()
        kind, code, checksum, ident, echoed = struct.unpack_from("!BBHHH", payload)
        # RFC 4443 section 4.1; the checksum is the kernel's to fill in over the IPv6 pseudo-header.
        assert (kind, code, checksum, ident, echoed) == (128, 0, 0, s.ident, seq)
        assert dest == ("2001:db8:ff::1", 0)  # as recvfrom spells the sender
        reply = struct.pack("!BBHHH", 129, 0, 0, s.ident, seq) + payload[8:]
        assert s.match(reply, ("2001:db8:ff::1", 0, 0, 0)) == seq
        assert s.match(reply, ("2001:db8:ff::2", 0, 0, 0)) is None  # another sender, knowing the numbers
        assert s.match(payload, ("2001:db8:ff::1", 0, 0, 0)) is None  # our own request, looped back
        assert s.match(struct.pack("!BBHHH", 129, 0, 0, s.ident ^ 1, seq), ("2001:db8:ff::1", 0, 0, 0)) is None
        assert s.match(reply[:7], ("2001:db8:ff::1", 0, 0, 0)) is None
        # The socket hears echo replies only: a set bit blocks its type (RFC 3542 section 3.2, Linux order).
        assert isinstance(s.sock, QuietSocket)
        words = struct.unpack("=8I", s.sock.icmp6_filter)
        passed = [t for t in range(256) if not words[t >> 5] & (1 << (t & 31))]
        assert passed == [129]
    finally:
        s.close()


def test_a_link_local_target_is_sent_to_in_the_uplinks_zone() -> None:
    s = icmp.IcmpSession(ProbeSpec("icmp", "fe80::1", 1.0, 0.5), UPLINK)
    try:
        _payload, dest, seq = s.request()
        assert dest == ("fe80::1%up0", 0)
        # recvfrom names the sender without its zone (the interface index comes apart, the socket's
        # device binding already keeps other links' answers out).
        reply = struct.pack("!BBHHH", 129, 0, 0, s.ident, seq)
        assert s.match(reply, ("fe80::1", 0, 0, 7)) == seq
    finally:
        s.close()
    assert zoned("2001:db8::1", "up0") == "2001:db8::1"
    assert zoned("192.0.2.1", "up0") == "192.0.2.1"
    assert zoned("fe80::1%eth9", "up0") == "fe80::1%eth9"  # a zone written is kept


def test_icmp6_filter_passes_the_types_named() -> None:
    words = struct.unpack("=8I", icmp.icmp6_filter(1, 136, 255))
    assert [t for t in range(256) if not words[t >> 5] & (1 << (t & 31))] == [1, 136, 255]


@pytest.mark.parametrize(
    ("target", "group"),
    [
        ("2001:db8:1::1", "ff02::1:ff00:1"),
        ("fe80::1234:5678:9abc", "ff02::1:ff78:9abc"),
        ("2001:db8::ab:cdef:0102", "ff02::1:ffef:102"),
    ],
)
def test_solicitations_go_to_the_solicited_node_group(target: str, group: str) -> None:
    assert solicited_node(IPv6Address(target).packed) == group


def test_a_solicitation_carries_the_target_and_our_link_address() -> None:
    ns = solicitation(ROUTER, MAC)
    # RFC 4861 section 4.3: type 135, code 0, checksum (the kernel's), reserved, target; then section
    # 4.6.1's Source Link-Layer Address option, in units of 8 octets.
    assert len(ns) == 32
    assert struct.unpack_from("!BBHI", ns) == (135, 0, 0, 0)
    assert ns[8:24] == ROUTER
    assert ns[24:] == b"\x01\x01" + MAC
    # A link without link-layer addresses (a raw-IP modem): no option.
    assert solicitation(ROUTER, None) == ns[:24]


def advert(flags: int = 0x60, target: bytes = ROUTER, kind: int = 136, code: int = 0) -> bytes:
    """A Neighbor Advertisement (section 4.4): S and O set unless told, with a Target Link-Layer option."""
    return struct.pack("!BBHB3x16s", kind, code, 0, flags, target) + b"\x02\x01" + MAC


def test_only_a_solicited_advertisement_for_the_next_hop_from_the_link_counts() -> None:
    assert advertises(advert(), HOP_LIMIT, ROUTER)
    assert advertises(advert(flags=0xE0), HOP_LIMIT, ROUTER)  # from a router (R): of course
    assert advertises(advert()[:24], HOP_LIMIT, ROUTER)  # the option is optional
    # Section 7.1.2: any hop limit but 255 means it was forwarded, so it came from off the link.
    assert not advertises(advert(), 254, ROUTER)
    assert not advertises(advert(), 64, ROUTER)
    assert not advertises(advert(), None, ROUTER)  # the kernel did not say: not taken on trust
    assert not advertises(advert(flags=0x20), HOP_LIMIT, ROUTER)  # unsolicited: not an answer to us
    assert not advertises(advert(target=IPv6Address("2001:db8:1::2").packed), HOP_LIMIT, ROUTER)
    assert not advertises(advert(kind=135), HOP_LIMIT, ROUTER)  # a solicitation, someone else's
    assert not advertises(advert(code=1), HOP_LIMIT, ROUTER)
    assert not advertises(advert()[:23], HOP_LIMIT, ROUTER)


def test_the_hop_limit_is_read_from_the_ancillary_data() -> None:
    stamp = (socket.SOL_SOCKET, 35, b"\0" * 16)
    hops = (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, struct.pack("=i", 255))
    assert hop_limit([stamp, hops]) == 255
    assert hop_limit([stamp]) is None
    assert hop_limit([(socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, b"\xff")]) is None


DUAL = """
site: s
uplinks:
  - name: fiber
    interface: eth1
    next_hop: 192.0.2.1
    next_hop6: fe80::1
    probes:
      - {kind: icmp, target: "2001:db8:ff::1"}
      - {kind: ndp-nexthop}
      - {kind: ndp-nexthop, target: "2001:db8:1::1"}
      - {kind: arp-nexthop}
  - name: lte
    interface: wwan0
    next_hop: 2001:db8:2::1
    probes: [{kind: ndp-nexthop}, {kind: http, url: "http://[2001:db8:ff::80]:8080/"}]
classes:
  - {name: all, path: [fiber, lte]}
"""


def test_ndp_nexthop_asks_for_the_uplinks_ipv6_next_hop() -> None:
    policy = parse_policy_text(DUAL, "dual.yaml")
    # A dual-stack uplink is one uplink per family (policy/compile.py): the IPv6 one's next hop is next_hop6.
    fiber, fiber6, lte = policy.uplinks["fiber"], policy.uplinks["fiber/v6"], policy.uplinks["lte"]
    assert (fiber.next_hop, fiber6.next_hop) == ("192.0.2.1", "fe80::1")
    assert [p.key for p in fiber.probes] == ["arp-nexthop:192.0.2.1"]
    assert [p.key for p in fiber6.probes] == [
        "icmp:2001:db8:ff::1",
        "ndp-nexthop:fe80::1",
        "ndp-nexthop:2001:db8:1::1",
    ]
    assert (lte.next_hop, lte.next_hop6) == ("2001:db8:2::1", None)  # IPv6-only: next_hop is the IPv6 one
    assert [p.key for p in lte.probes] == ["ndp-nexthop:2001:db8:2::1", "http:http://[2001:db8:ff::80]:8080/"]
