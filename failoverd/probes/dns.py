"""DNS probes: one query over UDP; any answer with our id proves the path and the server alive."""

from __future__ import annotations

import socket
import struct
from ipaddress import ip_address

from failoverd.policy.model import ProbeSpec, UplinkSpec
from failoverd.probes.base import DatagramSession, family_of, marked_socket, probe_device, zoned

_QTYPE = {"A": 1, "NS": 2, "SOA": 6, "AAAA": 28}


def encode_query(qid: int, name: str, record: str) -> bytes:
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD set, one question (RFC 1035 4.1.1)
    labels = [label for label in name.strip(".").split(".") if label]
    qname = b"".join(bytes([len(lb)]) + lb.encode("idna") for lb in labels) + b"\0"
    return header + qname + struct.pack("!HH", _QTYPE[record], 1)


class DnsSession(DatagramSession):
    def __init__(self, spec: ProbeSpec, uplink: UplinkSpec) -> None:
        fam = family_of(spec.target)
        sock = marked_socket(fam, socket.SOCK_DGRAM, 0, uplink.fwmark)
        super().__init__(sock, spec.timeout, probe_device(fam, uplink.interface))
        self.dest = (zoned(spec.target, uplink.interface), spec.port or 53)
        self.server = (str(ip_address(spec.target)), self.dest[1])  # as recvfrom spells it
        self.name = spec.query or "."
        self.record = spec.record or "NS"

    def match(self, data: bytes, addr: tuple[str, int]) -> int | None:
        # From the server we asked, on its port: any other sender may know our id but not count.
        if len(data) < 12 or addr[0] != self.server[0] or addr[1] != self.server[1]:
            return None
        qid, flags = struct.unpack_from("!HH", data)
        return qid if flags & 0x8000 else None  # QR bit: a response

    def request(self) -> tuple[bytes, tuple[str, int], int]:
        qid = self.next_seq()
        return encode_query(qid, self.name, self.record), self.dest, qid
