"""An SNTP server that lies on purpose, for clock-sanity tests and the ntp-liar scenario.

`python -m lab.liar --bind 198.19.0.126 [--offset SECONDS | --year-2000 | --drift-ppm N | --silent]`
Answers like a stratum-2 server, but with the wall clock shifted by a fixed offset, set back to
2000-01-01 (as a real public service once did), drifting away at N ppm, or not at all.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import time

from lab.serve import serve_udp

NTP_EPOCH = 2208988800
Y2000 = 946684800.0
_PACKET = "!BBbbIIIQQQQ"


def ntp(t: float) -> int:
    return int((t + NTP_EPOCH) * 2**32) & 0xFFFFFFFFFFFFFFFF


class Liar(asyncio.DatagramProtocol):
    def __init__(self, mode: str, value: float) -> None:
        self.mode, self.value, self.start = mode, value, time.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def lie(self, t: float) -> float:
        if self.mode == "offset":
            return t + self.value
        if self.mode == "year-2000":
            return Y2000 + (t - self.start)
        return t + (t - self.start) * self.value * 1e-6  # drift

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.mode == "silent" or len(data) < 48 or data[0] & 7 != 3:
            return
        rx = self.lie(time.time())
        xmt = struct.unpack_from("!Q", data, 40)[0]
        reply = struct.pack(
            _PACKET, 0x24, 2, 4, -20, 0x10, 0x10, 0x7F7F0101, ntp(rx - 16), xmt, ntp(rx), ntp(self.lie(time.time()))
        )
        self.transport.sendto(reply, addr)  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bind", required=True)
    ap.add_argument("--port", type=int, default=123)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--offset", type=float)
    g.add_argument("--year-2000", action="store_true")
    g.add_argument("--drift-ppm", type=float)
    g.add_argument("--silent", action="store_true")
    args = ap.parse_args()
    if args.offset is not None:
        mode, value = "offset", args.offset
    elif args.year_2000:
        mode, value = "year-2000", 0.0
    elif args.drift_ppm is not None:
        mode, value = "drift", args.drift_ppm
    else:
        mode, value = "silent", 0.0
    asyncio.run(serve_udp(lambda: Liar(mode, value), [args.bind], args.port))


if __name__ == "__main__":
    main()
