"""NDP probes of the IPv6 next hop (RFC 4861): is the ISP's router on the link answering at all?"""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv6Address

from failoverd.policy.model import ProbeSpec, UplinkSpec
from failoverd.probes.arp import own_mac
from failoverd.probes.base import DatagramSession, marked_socket
from failoverd.probes.icmp import ICMP6_FILTER, icmp6_filter

NEIGHBOR_SOLICIT = 135
NEIGHBOR_ADVERT = 136
HOP_LIMIT = 255  # RFC 4861 section 7.1: sent with 255, and any other value proves an off-link sender
_SOLICITED = 0x40  # the S flag of an advertisement: it answers a solicitation (section 4.4)
_SOURCE_LL = 1  # the Source Link-Layer Address option (section 4.6.1)
_HOPS = socket.CMSG_SPACE(struct.calcsize("i"))


def solicited_node(target: bytes) -> str:
    """The solicited-node multicast group of an address (RFC 4291 section 2.7.1): ff02::1:ffXX:XXXX."""
    return str(IPv6Address(b"\xff\x02" + b"\0" * 9 + b"\x01\xff" + target[13:]))


def solicitation(target: bytes, mac: bytes | None) -> bytes:
    """A Neighbor Solicitation for `target` (section 4.3), checksum left to the kernel. It carries our
    link-layer address when the link has one: multicast solicitations must (section 7.2.2)."""
    ns = struct.pack("!BBHI16s", NEIGHBOR_SOLICIT, 0, 0, 0, target)
    return ns + struct.pack("!BB6s", _SOURCE_LL, 1, mac) if mac else ns


def advertises(data: bytes, hops: int | None, target: bytes) -> bool:
    """Whether `data` is a solicited Neighbor Advertisement for `target` that passes section 7.1.2's
    checks: hop limit 255 (unknown counts as failed), code 0, at least 24 octets. (The kernel has
    checked its ICMPv6 checksum.)"""
    return (
        hops == HOP_LIMIT
        and len(data) >= 24
        and data[0] == NEIGHBOR_ADVERT
        and data[1] == 0
        and bool(data[4] & _SOLICITED)
        and data[8:24] == target
    )


def hop_limit(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The hop limit a datagram arrived with (IPV6_RECVHOPLIMIT), if the kernel said."""
    for level, kind, value in ancillary:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT and len(value) >= 4:
            return int(struct.unpack_from("=i", value)[0])
    return None


def _link_address(ifname: str) -> bytes | None:
    """The interface's MAC address, or None on a link without link-layer addresses (a raw-IP modem)."""
    mac = own_mac(ifname)
    return mac if any(mac) else None


class NdpSession(DatagramSession):
    """Neighbor Solicitations to the next hop's solicited-node group on the uplink's link, as arp.py
    broadcasts its requests: an answer says the router is there, whatever the neighbour cache holds.

    The socket is raw ICMPv6, bound to the uplink's device (it sends there and hears only that link),
    filtered to advertisements, with the hop limit of every answer read from its ancillary data."""

    ancillary_space = DatagramSession.ancillary_space + _HOPS
    checks_ancillary = True

    def __init__(self, spec: ProbeSpec, uplink: UplinkSpec) -> None:
        self.ifname = uplink.interface
        sock = marked_socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6, uplink.fwmark)
        try:
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, icmp6_filter(NEIGHBOR_ADVERT))
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        except OSError:
            sock.close()
            raise
        super().__init__(sock, spec.timeout, self.ifname)
        self.target = IPv6Address(spec.target).packed
        self.group = solicited_node(self.target)

    def match_with(self, data: bytes, ancillary: list[tuple[int, int, bytes]], addr: tuple[str, int]) -> int | None:
        return 1 if advertises(data, hop_limit(ancillary), self.target) else None

    def request(self) -> tuple[bytes, tuple[str, int, int, int], int]:
        # Looked up for every probe, like the device binding: the interface may come and go.
        index = socket.if_nametoindex(self.ifname)
        # An advertisement queued before this solicitation goes out answers someone else's: the
        # kernel's own, most often, sent for the same router a moment ago because another probe's
        # packet needed its link-layer address. Taken for ours it would be timed when read, at the
        # next round (the lab saw "late (499 ms)"): read past it, so only our own answer counts.
        self.discard_queued()
        # One outstanding solicitation at a time is enough: sequence "1" names it.
        return solicitation(self.target, _link_address(self.ifname)), (self.group, 0, 0, index), 1
