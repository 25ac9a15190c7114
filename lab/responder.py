"""A UDP echo responder (RFC 862) for probe targets: `python -m lab.responder --bind ADDR … [--port 7]`.

It binds each address on its own so that every answer leaves from the address that was asked: a reply
from another address would be a new flow to the gateway's conntrack, not the probe's answer.
"""

from __future__ import annotations

import argparse
import asyncio
import signal


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


async def serve(port: int, hosts: list[str]) -> None:
    loop = asyncio.get_running_loop()
    transports = [(await loop.create_datagram_endpoint(Echo, local_addr=(h, port)))[0] for h in hosts]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for t in transports:
        t.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=7)
    ap.add_argument("--bind", action="append", required=True, help="an address to answer on (repeat)")
    args = ap.parse_args()
    asyncio.run(serve(args.port, args.bind))


if __name__ == "__main__":
    main()
