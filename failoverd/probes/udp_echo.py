"""UDP echo probes (RFC 862 echo, or the lab's responder): cheap enough for sub-100 ms intervals."""

from __future__ import annotations

import os
import socket

from failoverd.policy.model import ProbeSpec, UplinkSpec
from failoverd.probes.base import DatagramSession, family_of, marked_socket, probe_device, zoned

# A probe datagram: magic, our session token (4 bytes), sequence number (2 bytes, network order).
# Echoed back verbatim.
_MAGIC = b"FOD1"


class UdpEchoSession(DatagramSession):
    def __init__(self, spec: ProbeSpec, uplink: UplinkSpec) -> None:
        fam = family_of(spec.target)
        sock = marked_socket(fam, socket.SOCK_DGRAM, 0, uplink.fwmark)
        super().__init__(sock, spec.timeout, probe_device(fam, uplink.interface))
        self.dest = (zoned(spec.target, uplink.interface), spec.port or 7)
        self.prefix = _MAGIC + os.urandom(4)  # what every datagram of this session starts with

    def match(self, data: bytes, addr: tuple[str, int]) -> int | None:
        # A slice compared, not a header unpacked: this runs for every answer.
        if len(data) < 10 or data[:8] != self.prefix:
            return None
        return int.from_bytes(data[8:10], "big")

    def request(self) -> tuple[bytes, tuple[str, int], int]:
        seq = self.next_seq()
        return self.prefix + seq.to_bytes(2, "big"), self.dest, seq
