"""A user-space delay relay (this kernel has no netem): packets crossing a node wait in a TUN device.

`python -m lab.delay --dev dly0 --delay-ms 300 --via down0 --via up0` routes every packet of either
family that arrives on a --via interface (and is not for this node) into the TUN device, holds it, and
writes it back; it re-enters the kernel from the TUN device (without packet information the kernel
reads the family from the IP version) and is forwarded as usual. Send a number of
milliseconds to UDP 127.0.0.1:9999 inside the node to change the delay while it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import subprocess

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
TABLE = "250"


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


class Control(asyncio.DatagramProtocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(ValueError):
            self.relay.delay = max(0.0, float(data.decode().strip()) / 1000)


class Relay:
    def __init__(self, fd: int, delay: float) -> None:
        self.fd = fd
        self.delay = delay
        self.loop = asyncio.get_running_loop()

    def readable(self) -> None:
        while True:
            try:
                packet = os.read(self.fd, 65535)
            except BlockingIOError:
                return
            self.loop.call_later(self.delay, self._write, packet)

    def _write(self, packet: bytes) -> None:
        with contextlib.suppress(OSError):  # a full queue drops the packet, as a real link would
            os.write(self.fd, packet)


async def main_async(dev: str, delay_ms: float, via: list[str], port: int) -> None:
    sh("sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0")
    fd = open_tun(dev)
    sh("ip", "link", "set", "dev", dev, "up")
    # The local table (rule 0) comes first: packets for this node, and IPv6 neighbour discovery (its
    # multicast routes are local ones), are delivered, never delayed.
    for family in ("-4", "-6"):
        sh("ip", family, "route", "replace", "default", "dev", dev, "table", TABLE)
        for i, ifname in enumerate(via):
            sh("ip", family, "rule", "add", "iif", ifname, "lookup", TABLE, "priority", str(100 + i))
    relay = Relay(fd, delay_ms / 1000)
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, relay.readable)
    await loop.create_datagram_endpoint(lambda: Control(relay), local_addr=("127.0.0.1", port))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dev", default="dly0")
    ap.add_argument("--delay-ms", type=float, default=300.0)
    ap.add_argument("--via", action="append", required=True)
    ap.add_argument("--control-port", type=int, default=9999)
    args = ap.parse_args()
    asyncio.run(main_async(args.dev, args.delay_ms, args.via, args.control_port))


if __name__ == "__main__":
    main()
