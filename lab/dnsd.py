"""A tiny authoritative DNS responder for the lab: answers every name with one A (and AAAA) record.

`python -m lab.dnsd --bind 198.19.0.53 [--bind 2001:db8:19::53] [--port 53] [--answer 198.19.1.10]
[--answer6 2001:db8:19:1::10]`. Enough for probes and DNS-failure scenarios; it is no resolver.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct

from lab.serve import serve_udp


def answer(query: bytes, address: str, address6: str | None = None) -> bytes | None:
    """The reply to a query: its A record, its AAAA record when address6 is given, else no answer."""
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
    elif qtype == 28 and address6 is not None:  # AAAA (RFC 3596 section 2.1)
        records = struct.pack("!HHHIH", 0xC00C, 28, 1, 60, 16) + socket.inet_pton(socket.AF_INET6, address6)
        count = 1
    header = struct.pack("!HHHHHH", qid, 0x8180, 1, count, 0, 0)
    return header + question + records


class Dns(asyncio.DatagramProtocol):
    def __init__(self, address: str, address6: str | None = None) -> None:
        self.address = address
        self.address6 = address6

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = answer(data, self.address, self.address6)
        if reply is not None:
            self.transport.sendto(reply, addr)  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bind", action="append", required=True)
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--answer", default="198.19.1.10")
    ap.add_argument("--answer6", help="the AAAA record's address (none: AAAA queries get no answer)")
    args = ap.parse_args()
    asyncio.run(serve_udp(lambda: Dns(args.answer, args.answer6), args.bind, args.port))


if __name__ == "__main__":
    main()
