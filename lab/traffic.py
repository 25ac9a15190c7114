"""Lab traffic: a paced UDP stream with sequence numbers, and a receiver that measures what arrived.

`python -m lab.traffic send --dst 198.19.1.10:9000 --rate 1000`
`python -m lab.traffic recv --bind 198.19.1.10:9000 --out result.json`   (summary on SIGTERM)
Either family: an IPv6 address is written in brackets, `--dst [2001:db8:19:1::10]:9000`.

The receiver reports the longest gap between consecutive arrivals (the outage a user felt), lost,
duplicated and reordered packets, and which source address (after NAT: which ISP) carried each part
of the stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.serve import stop_on_signals

MAGIC = b"FOT1"
FMT = "!4sId"  # magic, sequence, send time (CLOCK_MONOTONIC, shared by every namespace of one host)
SIZE = struct.calcsize(FMT)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _source(addr: str) -> str:
    """A sender's address as written: an IPv4 one that reached an IPv6 socket loses its ::ffff: form."""
    return addr.removeprefix("::ffff:") if addr.startswith("::ffff:") and "." in addr else addr


async def send(dst: tuple[str, int], rate: float, duration: float | None, size: int, tos: int) -> int:
    fam = _family(dst[0])
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    if tos and fam == socket.AF_INET6:  # the traffic class octet holds the DSCP as TOS does (RFC 2474)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
    elif tos:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
    sock.setblocking(False)
    stop = stop_on_signals()
    start = time.monotonic()
    seq = 0
    pad = b"\0" * max(0, size - SIZE)
    while not stop.is_set():
        now = time.monotonic()
        if duration is not None and now - start >= duration:
            break
        due = int((now - start) * rate) + 1
        while seq < due:
            # No route right now: the packet is lost, the stream goes on.
            with contextlib.suppress(OSError):
                sock.sendto(struct.pack(FMT, MAGIC, seq, time.monotonic()) + pad, dst)
            seq += 1
        await asyncio.sleep(min(0.001, 1 / rate))
    sock.close()
    return seq


@dataclass
class Receiver:
    arrivals: list[tuple[float, int, str, float]] = field(default_factory=list)  # t, seq, src, sent

    def summary(self, top: int = 5) -> dict[str, Any]:
        if not self.arrivals:
            return {"received": 0, "max_gap_ms": None, "lost": None, "by_source": {}, "switches": []}
        seen: set[int] = set()
        dup = reordered = 0
        highest = -1
        by_source: dict[str, int] = {}
        switches: list[dict[str, Any]] = []
        gaps: list[tuple[float, float, float]] = []
        prev_t, prev_src = self.arrivals[0][0], self.arrivals[0][2]
        for t, seq, src, _ in self.arrivals:
            if seq in seen:
                dup += 1
                continue
            seen.add(seq)
            by_source[src] = by_source.get(src, 0) + 1
            if seq < highest:
                # A late packet (say, held in a queue while a link was down) is not the live stream:
                # it neither ends a gap nor marks a change of path.
                reordered += 1
                continue
            highest = seq
            gaps.append((t - prev_t, prev_t, t))
            if src != prev_src:
                switches.append({"t": t, "from": prev_src, "to": src})
            prev_t, prev_src = t, src
        first = min(seen)
        gaps.sort(reverse=True)
        return {
            "received": len(seen),
            "first_seq": first,
            "last_seq": highest,
            "lost": highest - first + 1 - len(seen),
            "duplicates": dup,
            "reordered": reordered,
            "max_gap_ms": round(gaps[0][0] * 1000, 3) if gaps else 0.0,
            "gaps": [{"ms": round(g * 1000, 3), "from_t": a, "to_t": b} for g, a, b in gaps[:top]],
            "by_source": by_source,
            "switches": switches,
            "first_t": self.arrivals[0][0],
            "last_t": self.arrivals[-1][0],
            "buckets": self.buckets(),
        }

    def buckets(self, width: float = 0.1) -> list[list[Any]]:
        """Arrivals per `width` seconds and source: what a plot of delivery over time needs."""
        out: dict[int, dict[str, int]] = {}
        for t, _, src, _ in self.arrivals:
            b = out.setdefault(int(t / width), {})
            b[src] = b.get(src, 0) + 1
        return [[round(k * width, 3), v] for k, v in sorted(out.items())]


# Linux's IP_PKTINFO (Python 3.11's socket module does not name it): the interface a datagram came in on.
IP_PKTINFO = 8


async def recv(
    bind: tuple[str, int], out: Path | None, duration: float | None, by_iface: bool = False
) -> dict[str, Any]:
    """Receive the stream; a packet's path is its source address, or with `by_iface` the interface it
    arrived on (which tells the ISP that carried it even when a stale NAT binding kept the source)."""
    fam = _family(bind[0])
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    if by_iface and fam == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    elif by_iface:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.bind(bind)
    sock.setblocking(False)
    r = Receiver()
    loop = asyncio.get_running_loop()
    stop = stop_on_signals()
    names: dict[int, str] = {}

    def iface(anc: list[tuple[int, int, bytes]]) -> str:
        for level, kind, blob in anc:
            # struct in_pktinfo begins with the interface index; struct in6_pktinfo ends with it (RFC 3542 6.1).
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(blob) >= 4:
                index = struct.unpack_from("=i", blob)[0]
            elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(blob) >= 20:
                index = struct.unpack_from("=i", blob, 16)[0]
            else:
                continue
            if index not in names:
                try:
                    names[index] = socket.if_indextoname(index)
                except OSError:
                    names[index] = f"if{index}"
            return names[index]
        return "?"

    def readable() -> None:
        while True:
            try:
                data, anc, _, addr = sock.recvmsg(2048, socket.CMSG_SPACE(20))
            except BlockingIOError:
                return
            if len(data) >= SIZE:
                magic, seq, sent = struct.unpack_from(FMT, data)
                if magic == MAGIC:
                    r.arrivals.append((time.monotonic(), seq, iface(anc) if by_iface else _source(addr[0]), sent))

    loop.add_reader(sock.fileno(), readable)
    if duration is None:
        await stop.wait()
    else:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
    loop.remove_reader(sock.fileno())
    readable()
    sock.close()
    summary = r.summary()
    if out is not None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary))
        tmp.replace(out)
    return summary


async def tcp_send(dst: tuple[str, int], rate: float, duration: float | None) -> int:
    """Records over TCP at `rate` per second; reconnects when the connection breaks (as after a
    failover with NAT, when the old flow's state is flushed)."""
    stop = stop_on_signals()
    start = time.monotonic()
    seq = 0
    pad = b"\0" * 52
    while not stop.is_set() and (duration is None or time.monotonic() - start < duration):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(*dst), 1.0)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.05)
            continue
        try:
            while not stop.is_set() and (duration is None or time.monotonic() - start < duration):
                due = int((time.monotonic() - start) * rate) + 1
                while seq < due:
                    writer.write(struct.pack(FMT, MAGIC, seq, time.monotonic()) + pad)
                    seq += 1
                await asyncio.wait_for(writer.drain(), 1.0)
                await asyncio.sleep(min(0.01, 1 / rate))
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
    return seq


async def tcp_recv(bind: tuple[str, int], out: Path | None, duration: float | None) -> dict[str, Any]:
    r = Receiver()
    record = SIZE + 52

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        src = _source(writer.get_extra_info("peername")[0])
        try:
            while True:
                data = await reader.readexactly(record)
                magic, seq, sent = struct.unpack_from(FMT, data)
                if magic == MAGIC:
                    r.arrivals.append((time.monotonic(), seq, src, sent))
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, *bind)
    stop = stop_on_signals()
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
    r.arrivals.sort()
    summary = r.summary()
    if out is not None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary))
        tmp.replace(out)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lab.traffic", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("--dst", required=True)
    s.add_argument("--rate", type=float, default=1000.0, help="packets per second")
    s.add_argument("--duration", type=float)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--tos", type=lambda v: int(v, 0), default=0, help="IP TOS byte, e.g. 0xb8 for DSCP EF")
    s.add_argument("--tcp", action="store_true", help="a TCP stream of records instead of UDP datagrams")
    r = sub.add_parser("recv")
    r.add_argument("--bind", required=True)
    r.add_argument("--out", type=Path)
    r.add_argument("--duration", type=float)
    r.add_argument("--tcp", action="store_true")
    r.add_argument("--by-iface", action="store_true", help="name each packet's path by its arrival interface")
    args = ap.parse_args(argv)
    if args.cmd == "send" and args.tcp:
        asyncio.run(tcp_send(_addr(args.dst), args.rate, args.duration))
    elif args.cmd == "send":
        sent = asyncio.run(send(_addr(args.dst), args.rate, args.duration, args.size, args.tos))
        print(json.dumps({"sent": sent}), flush=True)
    else:
        if args.tcp:
            summary = asyncio.run(tcp_recv(_addr(args.bind), args.out, args.duration))
        else:
            summary = asyncio.run(recv(_addr(args.bind), args.out, args.duration, args.by_iface))
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
