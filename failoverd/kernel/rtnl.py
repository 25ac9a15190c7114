"""Bulk rtnetlink for routes: many route requests in one write and their acks read back, and a route dump.

pyroute2 spends ~0.7 ms of Python per request and waits for each answer, so 10,000 routes took
minutes. failoverd's routes have one small shape (a default route, or a stale prefix of ours to
delete), so their messages are packed here with `struct` and pipelined: a window of requests per
write. The kernel answers a failed request with an error even unasked, and handles a write's
requests in order, so only the last of a window asks for an ack (NLM_F_ACK): when it comes, every
error of the window has come before it. One read per window instead of one per route.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

NETLINK_ROUTE = 0
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP_INTR, NLM_F_DUMP = 0x1, 0x4, 0x10, 0x300
NLM_F_REPLACE, NLM_F_CREATE = 0x100, 0x400
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
NLMSG = struct.Struct("=IHHII")
RTMSG = struct.Struct("=BBBBBBBBI")
RTATTR = struct.Struct("=HH")
WINDOW = 256  # requests in flight: their acks must fit the receive buffer


@dataclass(frozen=True, slots=True)
class RouteMsg:
    """One route request, or one route read back from a dump."""

    family: int  # 4 or 6
    table: int
    protocol: int
    type: int  # RTN_UNICAST 1, RTN_BLACKHOLE 6, RTN_UNREACHABLE 7, ...
    dst: str | None = None  # None: the default route
    dst_len: int = 0
    gateway: str | None = None
    oif: int | None = None


def _attr(kind: int, payload: bytes) -> bytes:
    raw = RTATTR.pack(RTATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _packed(family: int, addr: str) -> bytes:
    return socket.inet_pton(FAMILY[family], addr)


def encode(cmd: str, r: RouteMsg, seq: int, *, ack: bool = True) -> bytes:
    """The netlink message for `replace` or `del` of this route."""
    if cmd == "replace":
        mtype, flags = RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_REPLACE | NLM_F_CREATE
        # A route with no next hop is on-link (point-to-point): link scope, as `ip route` gives it.
        scope = RT_SCOPE_LINK if r.type == 1 and r.gateway is None else RT_SCOPE_UNIVERSE
    elif cmd == "del":
        mtype, flags, scope = RTM_DELROUTE, NLM_F_REQUEST, RT_SCOPE_NOWHERE  # any scope matches
    else:
        raise ValueError(f"unknown route command {cmd!r}")
    if ack:
        flags |= NLM_F_ACK
    attrs = _attr(RTA_TABLE, struct.pack("=I", r.table))
    if r.dst is not None:
        attrs += _attr(RTA_DST, _packed(r.family, r.dst))
    if r.gateway is not None:
        attrs += _attr(RTA_GATEWAY, _packed(r.family, r.gateway))
    if r.oif is not None:
        attrs += _attr(RTA_OIF, struct.pack("=i", r.oif))
    fam = FAMILY[r.family]
    body = RTMSG.pack(fam, r.dst_len, 0, 0, r.table if r.table < 256 else 0, r.protocol, scope, r.type, 0) + attrs
    return NLMSG.pack(NLMSG.size + len(body), mtype, flags, seq, 0) + body


def _decode_route(family: int, data: bytes) -> RouteMsg:
    _fam, dst_len, _src_len, _tos, table, proto, _scope, rtype, _flags = RTMSG.unpack_from(data)
    dst = gateway = None
    oif = None
    off = RTMSG.size
    while off + RTATTR.size <= len(data):
        alen, kind = RTATTR.unpack_from(data, off)
        if alen < RTATTR.size:
            break
        payload = data[off + RTATTR.size : off + alen]
        if kind == RTA_TABLE:
            table = struct.unpack_from("=I", payload)[0]
        elif kind == RTA_DST:
            dst = socket.inet_ntop(FAMILY[family], payload)
        elif kind == RTA_GATEWAY:
            gateway = socket.inet_ntop(FAMILY[family], payload)
        elif kind == RTA_OIF:
            oif = struct.unpack_from("=i", payload)[0]
        off += (alen + 3) & ~3
    return RouteMsg(family, table, proto, rtype, dst, dst_len, gateway, oif)


class RouteSocket:
    """A NETLINK_ROUTE socket for pipelined route requests and dumps (in this process's namespace)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_ROUTE)
        for opt, size in ((socket.SO_SNDBUF, 1 << 20), (socket.SO_RCVBUF, 4 << 20)):
            self.sock.setsockopt(socket.SOL_SOCKET, opt, size)
        self.sock.bind((0, 0))
        self.seq = 0
        self.lock = asyncio.Lock()  # one exchange at a time: answers are read in order

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        return self.seq

    async def _messages(self) -> list[tuple[int, int, int, bytes]]:
        """One read: (type, flags, seq, payload) of each message in it."""
        data = await asyncio.get_running_loop().sock_recv(self.sock, 1 << 20)
        out = []
        off = 0
        while off + NLMSG.size <= len(data):
            length, mtype, flags, seq, _pid = NLMSG.unpack_from(data, off)
            if length < NLMSG.size:
                break
            out.append((mtype, flags, seq, data[off + NLMSG.size : off + length]))
            off += (length + 3) & ~3
        return out

    async def apply(self, requests: Sequence[tuple[str, RouteMsg]]) -> list[int]:
        """Send the requests pipelined; the errno of each (0: done), in the requests' order."""
        results = [0] * len(requests)
        loop = asyncio.get_running_loop()
        async with self.lock:
            for start in range(0, len(requests), WINDOW):
                window: dict[int, int] = {}
                chunk = bytearray()
                end = min(start + WINDOW, len(requests))
                for i in range(start, end):
                    seq = self._next_seq()
                    window[seq] = i
                    cmd, r = requests[i]
                    chunk += encode(cmd, r, seq, ack=i == end - 1)
                await loop.sock_sendall(self.sock, bytes(chunk))
                last = seq
                while last in window:
                    for mtype, _flags, mseq, payload in await self._messages():
                        if mtype == NLMSG_ERROR and mseq in window:
                            results[window.pop(mseq)] = -struct.unpack_from("=i", payload)[0]
        return results

    async def dump(self, family: int) -> list[RouteMsg]:
        """Every route of one family in every table; again when a change in the kernel interrupted it."""
        for _ in range(3):
            routes, consistent = await self._dump_once(family)
            if consistent:
                break
        return routes  # still interrupted: the next audit looks again

    async def _dump_once(self, family: int) -> tuple[list[RouteMsg], bool]:
        loop = asyncio.get_running_loop()
        async with self.lock:
            seq = self._next_seq()
            body = RTMSG.pack(FAMILY[family], 0, 0, 0, 0, 0, 0, 0, 0)
            await loop.sock_sendall(
                self.sock, NLMSG.pack(NLMSG.size + len(body), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body
            )
            routes: list[RouteMsg] = []
            consistent = True
            while True:
                for mtype, flags, mseq, payload in await self._messages():
                    if mseq != seq:
                        continue  # a late ack of an earlier exchange
                    consistent = consistent and not flags & NLM_F_DUMP_INTR
                    if mtype == NLMSG_DONE:
                        return routes, consistent
                    if mtype == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", payload)[0]
                        raise OSError(code, f"route dump: {os.strerror(code)}")
                    if mtype == RTM_NEWROUTE:
                        routes.append(_decode_route(family, payload))


def describe(code: int) -> str:
    return errno.errorcode.get(code, str(code)) + ": " + os.strerror(code)
