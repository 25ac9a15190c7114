"""A tiny authoritative DNS responder for the lab: answers every query for NAME with A records.

`python -m lab.dnsd --bind 198.19.0.53 [--port 53] [--answer 198.19.1.10]`. Enough for probes and
DNS-failure scenarios; it is no resolver.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct

from lab.serve import serve_udp


def answer(query: bytes, address: str) -> bytes | None:
    if len(query) < 12:
        return None
    qid, flags, qd = struct.unpack_from("!HHH", query)
    if flags & 0x8000 or qd != 1:
        return None
    # Walk the question's name to find where the question ends (RFC 1035 4.1.2).
    i = 12
    while i < len(query) and query[i] != 0:
        i += query[i] + 1
    end = i + 5
    if end > len(query):
        return None
    question = query[12:end]
    qtype = struct.unpack_from("!H", query, i + 1)[0]
    records = b""
    count = 0
    if qtype == 1:
        records = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
        count = 1
    header = struct.pack("!HHHHHH", qid, 0x8180, 1, count, 0, 0)
    return header + question + records


class Dns(asyncio.DatagramProtocol):
    def __init__(self, address: str) -> None:
        self.address = address

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = answer(data, self.address)
        if reply is not None:
            self.transport.sendto(reply, addr)  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bind", action="append", required=True)
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--answer", default="198.19.1.10")
    args = ap.parse_args()
    asyncio.run(serve_udp(lambda: Dns(args.answer), args.bind, args.port))


if __name__ == "__main__":
    main()
