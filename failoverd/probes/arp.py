"""ARP probes of the next hop (RFC 826): is the ISP's router on the link answering at all?"""

from __future__ import annotations

import fcntl
import socket
import struct

from failoverd.policy.model import ProbeSpec, UplinkSpec
from failoverd.probes.base import DatagramSession

ETH_P_ARP = 0x0806
SIOCGIFADDR = 0x8915
SIOCGIFHWADDR = 0x8927


def own_mac(ifname: str) -> bytes:
    # An ioctl, not /sys/class/net: after setns() into another namespace /sys still shows the old one.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", ifname.encode()[:15]))[18:24]


def _own_ipv4(ifname: str) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("256s", ifname.encode()[:15])
        return fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)[20:24]


class ArpSession(DatagramSession):
    def __init__(self, spec: ProbeSpec, uplink: UplinkSpec) -> None:
        self.ifname = uplink.interface
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ARP))
        sock.setblocking(False)
        sock.bind((self.ifname, ETH_P_ARP))
        super().__init__(sock, spec.timeout)
        self.target = socket.inet_aton(spec.target)
        self.mac = own_mac(self.ifname)

    def match(self, data: bytes, addr: tuple[str, int]) -> int | None:
        if len(data) < 28:
            return None
        op = struct.unpack_from("!H", data, 6)[0]
        sender_ip = data[14:18]
        return 1 if op == 2 and sender_ip == self.target else None

    def request(self) -> tuple[bytes, tuple[str, int, int, int, bytes], int]:
        try:
            own = _own_ipv4(self.ifname)
        except OSError as exc:
            raise OSError(exc.errno, f"{self.ifname} has no IPv4 address ({exc.strerror})") from exc
        # A reply queued before this request goes out answers someone else's: the kernel's own, most
        # often, resolving the router for another probe's packet a moment ago (the packet socket hears
        # every ARP on the link). Taken for ours it would pass a router that has since gone silent, or
        # be timed when read: read past it, as ndp.py does, so only an answer to this request counts.
        self.discard_queued()
        request = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, self.mac, own, b"\0" * 6, self.target)
        # One outstanding ARP at a time is enough: sequence "1" names it.
        return request, (self.ifname, ETH_P_ARP, 0, 0, b"\xff" * 6), 1
