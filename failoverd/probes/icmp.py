"""ICMP/ICMPv6 echo over a raw socket (root or CAP_NET_RAW), filtered by our identifier."""

from __future__ import annotations

import secrets
import socket
import struct
from ipaddress import ip_address

from failoverd.policy.model import ProbeSpec, UplinkSpec
from failoverd.probes.base import DatagramSession, family_of, marked_socket, probe_device, zoned

ECHO_REQUEST6 = 128
ECHO_REPLY6 = 129
ICMP6_FILTER = 1  # <netinet/icmp6.h>, at level IPPROTO_ICMPV6; Python's socket module does not name it


def icmp6_filter(*passed: int) -> bytes:
    """A struct icmp6_filter (RFC 3542 section 3.2) that lets only the ICMPv6 types `passed` reach the
    socket: a raw ICMPv6 socket otherwise wakes for every router advertisement and neighbour message on
    the link. Linux keeps 256 bits in eight host-order words, a set bit blocking its type."""
    words = [0xFFFFFFFF] * 8
    for t in passed:
        words[t >> 5] &= ~(1 << (t & 31))
    return struct.pack("=8I", *words)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


class IcmpSession(DatagramSession):
    def __init__(self, spec: ProbeSpec, uplink: UplinkSpec) -> None:
        self.family = family_of(spec.target)
        proto = socket.IPPROTO_ICMP if self.family == socket.AF_INET else socket.IPPROTO_ICMPV6
        device = probe_device(self.family, uplink.interface)
        super().__init__(marked_socket(self.family, socket.SOCK_RAW, proto, uplink.fwmark), spec.timeout, device)
        if self.family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, icmp6_filter(ECHO_REPLY6))
        self.ident = secrets.randbits(16)  # not guessable from the pid: see DatagramSession.seq
        self.target = str(ip_address(spec.target))  # as recvfrom spells it
        self.dest = (zoned(spec.target, uplink.interface), 0)

    def match(self, data: bytes, addr: tuple[str, int]) -> int | None:
        if self.family == socket.AF_INET:
            if len(data) < 20:
                return None
            data = data[(data[0] & 0x0F) * 4 :]  # IPv4 raw sockets deliver the IP header too
            reply_type = 0
        else:
            reply_type = ECHO_REPLY6
        if len(data) < 8 or addr[0] != self.target:
            return None
        icmp_type, _, _, ident, seq = struct.unpack_from("!BBHHH", data)
        return seq if icmp_type == reply_type and ident == self.ident else None

    def request(self) -> tuple[bytes, tuple[str, int], int]:
        seq = self.next_seq()
        echo = 8 if self.family == socket.AF_INET else ECHO_REQUEST6
        payload = b"failoverd-probe!"
        header = struct.pack("!BBHHH", echo, 0, 0, self.ident, seq)
        if self.family == socket.AF_INET:  # the kernel fills in the ICMPv6 checksum itself
            header = struct.pack("!BBHHH", echo, 0, _checksum(header + payload), self.ident, seq)
        return header + payload, self.dest, seq
