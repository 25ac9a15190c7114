"""UDP echo probes (RFC 862 echo, or the lab's responder): cheap enough for sub-100 ms intervals."""

from __future__ import annotations

import os
import socket
import struct

from failoverd.policy.model import ProbeSpec, UplinkSpec
from failoverd.probes.base import DatagramSession, family_of, marked_socket

# A probe datagram: magic, our session token, sequence number. Echoed back verbatim.
_MAGIC = b"FOD1"
_FMT = "!4sIH"


class UdpEchoSession(DatagramSession):
    def __init__(self, spec: ProbeSpec, uplink: UplinkSpec) -> None:
        fam = family_of(spec.target)
        super().__init__(marked_socket(fam, socket.SOCK_DGRAM, 0, uplink.fwmark), spec.timeout)
        self.dest = (spec.target, spec.port or 7)
        self.token = int.from_bytes(os.urandom(4), "big")

    def match(self, data: bytes, addr: tuple[str, int]) -> int | None:
        if len(data) < struct.calcsize(_FMT):
            return None
        magic, token, seq = struct.unpack_from(_FMT, data)
        return seq if magic == _MAGIC and token == self.token else None

    def request(self) -> tuple[bytes, tuple[str, int], int]:
        seq = self.next_seq()
        return struct.pack(_FMT, _MAGIC, self.token, seq), self.dest, seq
