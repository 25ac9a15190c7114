"""What the lab's little UDP servers share: bind a protocol on each address, run until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (inside a running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def until_stopped() -> None:
    await stop_on_signals().wait()


async def serve_udp(factory: Callable[[], asyncio.DatagramProtocol], binds: list[str], port: int) -> None:
    loop = asyncio.get_running_loop()
    transports = [(await loop.create_datagram_endpoint(factory, local_addr=(b, port)))[0] for b in binds]
    try:
        await until_stopped()
    finally:
        for t in transports:
            t.close()
