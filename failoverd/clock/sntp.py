"""An SNTP client (RFC 5905 / RFC 4330): one request, the answer's offset, delay, root distance, leap, KoD."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

NTP_EPOCH = 2208988800  # seconds from 1900-01-01 to 1970-01-01
_PACKET = "!BBbbIIIQQQQ"  # RFC 5905 figure 8, without extensions


def to_ntp(t: float) -> int:
    return (int((t + NTP_EPOCH) * 2**32)) & 0xFFFFFFFFFFFFFFFF


def from_ntp(v: int) -> float:
    return v / 2**32 - NTP_EPOCH


def short(v: int) -> float:
    """NTP short format (16.16) to seconds."""
    return v / 2**16


@dataclass(frozen=True, slots=True)
class Reply:
    server: str
    ok: bool
    offset: float = 0.0  # theta: server minus local, seconds (RFC 5905 section 8)
    delay: float = 0.0  # delta: round trip minus server processing
    root_distance: float = 0.0  # root delay / 2 + root dispersion
    stratum: int = 0
    leap: int = 0
    refid: str = ""
    mono: float = 0.0  # when the answer arrived, monotonic
    error: str = ""  # why not ok: timeout, Kiss-o'-Death code, unsynchronized, bogus

    @property
    def half_width(self) -> float:
        return self.delay / 2 + self.root_distance


def build_request(t1: float) -> tuple[bytes, int]:
    # LI 0, VN 4, mode 3 (client). The transmit timestamp carries random low bits so that an
    # off-path attacker cannot guess it (RFC 5905 section 9.1 "origin timestamp" check).
    xmt = (to_ntp(t1) & ~0xFFFF) | int.from_bytes(os.urandom(2), "big")
    return struct.pack(_PACKET, 0x23, 0, 0, 0, 0, 0, 0, 0, 0, 0, xmt), xmt


def parse_reply(server: str, data: bytes, *, xmt: int, t1: float, t4: float, mono: float) -> Reply:
    if len(data) < 48:
        return Reply(server, False, mono=mono, error="short packet")
    (li_vn_mode, stratum, _poll, _prec, root_delay, root_disp, refid, _ref, org, rec, xmt_s) = struct.unpack(
        _PACKET, data[:48]
    )
    leap, mode = li_vn_mode >> 6, li_vn_mode & 7
    if mode != 4:
        return Reply(server, False, mono=mono, error=f"mode {mode}, not a server reply")
    if org != xmt:
        return Reply(server, False, mono=mono, error="origin timestamp mismatch (not an answer to us)")
    if stratum == 0:
        code = refid.to_bytes(4, "big").decode("ascii", "replace").strip("\0")
        return Reply(server, False, stratum=0, mono=mono, refid=code, error=f"Kiss-o'-Death {code}")
    if leap == 3 or stratum > 15:
        return Reply(server, False, stratum=stratum, leap=leap, mono=mono, error="server unsynchronized")
    if rec == 0 or xmt_s == 0:
        # RFC 4330 section 5 / RFC 5905 section 8: a server that has not filled in its timestamps has no
        # time to give; read as 1900 it would pull the consensus back 126 years.
        return Reply(server, False, stratum=stratum, leap=leap, mono=mono, error="bogus: zero timestamp")
    t2, t3 = from_ntp(rec), from_ntp(xmt_s)
    offset = ((t2 - t1) + (t3 - t4)) / 2
    delay = max(0.0, (t4 - t1) - (t3 - t2))
    rid = (
        socket.inet_ntoa(refid.to_bytes(4, "big"))
        if stratum > 1
        else refid.to_bytes(4, "big").decode("ascii", "replace").strip("\0")
    )
    return Reply(
        server,
        True,
        offset=offset,
        delay=delay,
        root_distance=short(root_delay) / 2 + short(root_disp),
        stratum=stratum,
        leap=leap,
        refid=rid,
        mono=mono,
    )


async def _destination(server: str, port: int) -> tuple[int, tuple[Any, ...]]:
    """The family and socket address to send to: an address as it is (a link-local one's zone becomes
    its scope id), a name as the resolver gives it first (so a name with only an AAAA record works)."""
    try:
        family = socket.AF_INET6 if ip_address(server).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_UNSPEC
    found = await asyncio.get_running_loop().getaddrinfo(server, port, family=family, type=socket.SOCK_DGRAM)
    if not found:
        raise OSError(f"no address for {server}")
    return found[0][0], found[0][4]


async def query(
    server: str, port: int = 123, timeout: float = 1.0, mark: int | None = None, device: str | None = None
) -> Reply:
    """One SNTP exchange with `server`, an IPv4 or IPv6 address (a link-local one with its zone,
    `fe80::1%fiber0`). `mark` steers it out of one uplink (SO_MARK), like the probes; `device` binds
    it to that uplink's interface as well, which IPv6 needs (see `failoverd.probes.base.probe_device`)."""
    loop = asyncio.get_running_loop()
    try:
        fam, address = await _destination(server, port)
    except OSError as exc:  # a name that does not resolve (`failoverd clock --server NAME`)
        return Reply(server, False, mono=time.monotonic(), error=exc.strerror or str(exc))
    try:
        # Out of descriptors (EMFILE) is a failed query like any other, not the end of the daemon.
        sock = socket.socket(fam, socket.SOCK_DGRAM)
    except OSError as exc:
        return Reply(server, False, mono=time.monotonic(), error=exc.strerror or str(exc))
    sock.setblocking(False)
    try:
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        if device is not None:  # a missing device (a modem not attached yet) is a failed query, with its reason
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        await loop.sock_connect(sock, address)
        t1 = time.time()
        packet, xmt = build_request(t1)
        await loop.sock_sendall(sock, packet)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Reply(server, False, mono=time.monotonic(), error="timeout")
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 512), remaining)
            except TimeoutError:
                return Reply(server, False, mono=time.monotonic(), error="timeout")
            t4, mono = time.time(), time.monotonic()
            reply = parse_reply(server, data, xmt=xmt, t1=t1, t4=t4, mono=mono)
            if reply.error.startswith("origin"):
                continue  # not ours: keep listening until the deadline
            return reply
    except OSError as exc:
        return Reply(server, False, mono=time.monotonic(), error=exc.strerror or str(exc))
    finally:
        sock.close()
