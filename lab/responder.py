"""A UDP echo responder (RFC 862) for probe targets: `python -m lab.responder --bind ADDR … [--port 7]`.

It binds each address on its own so that every answer leaves from the address that was asked: a reply
from another address would be a new flow to the gateway's conntrack, not the probe's answer.
"""

from __future__ import annotations

import argparse
import asyncio

from lab.serve import serve_udp


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=7)
    ap.add_argument("--bind", action="append", required=True, help="an address to answer on (repeat)")
    args = ap.parse_args()
    asyncio.run(serve_udp(Echo, args.bind, args.port))


if __name__ == "__main__":
    main()
