"""What every probe shares: marked sockets, the outcome record, the datagram session."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, ClassVar, NamedTuple, Protocol

# SO_TIMESTAMPNS (asm-generic, as on x86-64 and arm64; Python's socket module does not name it): the
# kernel stamps each datagram with its arrival time (CLOCK_REALTIME, struct timespec of two longs).
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)
LATE_SLACK = 0.0005  # s: deadlines this close together are one wakeup, not two


class ProbeOutcome(NamedTuple):
    """What one probe found. A named tuple (one per probe sent), not a frozen dataclass."""

    ok: bool
    rtt: float | None  # seconds
    detail: str = ""


_TIMEOUT = ProbeOutcome(False, None, "timeout")


@dataclass(slots=True)
class ProbeStats:
    """What `failoverctl status` shows of one probe beyond the engine's samples: why the last one
    failed, and how many it has completed. The runtime's counter, updated in place for every result
    rather than made anew for every result."""

    detail: str = ""
    done: int = 0
    lost: int = 0  # of `done`: timed out or refused


class Session(Protocol):
    """A long-lived prober for one target: `probe()` sends one probe and waits at most its timeout."""

    async def probe(self) -> ProbeOutcome: ...

    def close(self) -> None: ...


def family_of(address: str) -> int:
    return socket.AF_INET6 if ip_address(address).version == 6 else socket.AF_INET


def zoned(address: str, interface: str) -> str:
    """An address to send to: a link-local IPv6 one with its zone, the uplink's interface (the socket
    is bound to it too, see `probe_device`). recvfrom spells the sender without it (inet_ntop)."""
    a = ip_address(address)
    return f"{a}%{interface}" if a.version == 6 and a.is_link_local and a.scope_id is None else str(a)


def marked_socket(family: int, kind: int, proto: int, mark: int, device: str | None = None) -> socket.socket:
    """A non-blocking socket whose packets carry the uplink's mark, so its rule steers them out of it;
    bound to `device` as well when one is given (see `probe_device`).

    SO_BINDTODEVICE alone misleads over IPv4: with no route in the device's table the kernel would
    treat every target as on-link and ARP for it. The mark selects the uplink's own table instead.
    """
    s = socket.socket(family, kind, proto)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        if device is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def probe_device(family: int, interface: str) -> str | None:
    """The device an uplink's probe of this family is bound to, besides its mark: IPv6 probes only.

    Theory of operation. An IPv6 probe must leave through the uplink it judges or not at all, and the
    mark alone does not promise that: where no IPv6 rule sends the mark to the uplink's table, the
    lookup falls through to the main table, whose IPv6 default route often comes from another uplink's
    router advertisements. Bound to the device, the IPv6 route lookup is strict (net/ipv6/route.c,
    RT6_LOOKUP_F_IFACE): only routes through that device match, with or without the uplink's table,
    and none is "no route", never the on-link guess IPv4 makes; answers, too, are taken only from that
    device. IPv4 probes stay mark-only for that guess (see `marked_socket`). Binding a socket again
    needs CAP_NET_RAW, which the daemon has for its raw sockets anyway.
    """
    return interface if family == socket.AF_INET6 else None


class DatagramSession:
    """Request/response datagram probes matched by a sequence number, judged in rounds.

    Nothing here waits or wakes the event loop per datagram: `send` fires a probe due back by a
    deadline, `collect` reads every answer the socket holds, `expire` declares the overdue ones lost.
    A round driver (`failoverd.probes.rounds`) calls them once per interval tick and at deadlines
    between ticks: one wakeup per round for all of an interval's probes, not one per datagram and
    timer. The answers' round-trip times
    come from the kernel's arrival stamps, so reading them late does not make them slower.
    """

    # Bytes of ancillary data read with each answer: the arrival stamp. A session that judges answers
    # by more of it (ndp.py: the hop limit) asks for more room and overrides `match_with`.
    ancillary_space: ClassVar[int] = _ANCILLARY
    checks_ancillary: ClassVar[bool] = False

    def __init__(self, sock: socket.socket, timeout: float, device: str | None = None) -> None:
        self.sock = sock
        self.timeout = timeout
        # Bound again before every probe, not once at the start: a modem's interface may not exist yet
        # when the session opens, and one that comes back is a new device the old binding misses. A
        # missing device is then a lost probe with its reason, as a missing route is.
        self.device = device.encode() if device is not None else None
        # seq → (sent, monotonic; sent, wall clock; deadline, monotonic), in the order sent
        self.pending: dict[int, tuple[float, float, float]] = {}
        # A random start, like the ICMP identifier and the UDP token: an off-path sender who wants a
        # dead path to look alive must guess the numbers in flight rather than count from 1.
        self.seq = secrets.randbits(16)
        # Without stamps the round-trip time is measured when the answer is read.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def request(self) -> tuple[bytes, Any, int]:
        """The next probe: payload, destination address, sequence number its answer will carry."""
        raise NotImplementedError

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFF
        return self.seq

    def match(self, data: bytes, addr: tuple[str, int]) -> int | None:
        """The sequence number this datagram answers, or None if it is not an answer of ours."""
        raise NotImplementedError

    def match_with(self, data: bytes, ancillary: list[tuple[int, int, bytes]], addr: tuple[str, int]) -> int | None:
        """As `match`, for a session that sets `checks_ancillary`: with the datagram's ancillary data."""
        raise NotImplementedError

    def discard_queued(self, most: int = 64) -> None:
        """Drop the datagrams waiting on the socket (at most `most`), unread."""
        for _ in range(most):
            try:
                self.sock.recv(1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # a queued ICMP error: reported once, read on past it
                continue

    def send(self, deadline: float) -> Sequence[ProbeOutcome]:
        """Fire the next probe, due back by `deadline` (monotonic). Returns the losses known at once:
        usually none, as an empty tuple (no list made for every send)."""
        try:
            payload, dest, seq = self.request()
        except OSError as exc:  # nothing to send from (no address yet): a loss, with the reason
            return (ProbeOutcome(False, None, exc.strerror or str(exc)),)
        pending = self.pending
        wrapped = seq in pending  # the sequence wrapped onto a probe still waiting: that one is lost
        if wrapped:
            del pending[seq]
        sent, wall = time.monotonic(), time.time()
        try:
            if self.device is not None:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.device)
            self.sock.sendto(payload, dest)
        except OSError as exc:
            # No route, network down: the answer is known at once, but it is still a loss.
            failed = ProbeOutcome(False, None, exc.strerror or str(exc))
            return (_TIMEOUT, failed) if wrapped else (failed,)
        pending[seq] = (sent, wall, deadline)
        return (_TIMEOUT,) if wrapped else ()

    def collect(self, reads: int = 1 << 30) -> list[ProbeOutcome]:
        """Read the datagrams waiting on the socket (at most `reads`); the outcomes of the probes they answer."""
        outcomes: list[ProbeOutcome] = []
        errors = 0
        for _ in range(reads):
            try:
                data, ancillary, _flags, addr = self.sock.recvmsg(4096, self.ancillary_space)
            except (BlockingIOError, InterruptedError):
                return outcomes
            except OSError:  # an ICMP error queued on the socket is reported once; read on past it
                errors += 1
                if errors > 8:
                    return outcomes
                continue
            seq = self.match_with(data, ancillary, addr) if self.checks_ancillary else self.match(data, addr)
            entry = self.pending.pop(seq, None) if seq is not None else None
            if entry is None:
                continue  # not ours, or an answer to a probe already judged lost
            now = time.monotonic()
            sent, wall, deadline = entry
            rtt = now - sent  # at most; the kernel's stamp says exactly, if the wall clock held still
            for level, kind, stamp in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(stamp) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(stamp)
                    stamped = sec + nsec * 1e-9 - wall
                    if 0.0 <= stamped <= rtt:  # a stepped wall clock gives nonsense: keep the bound
                        rtt = stamped
            if sent + rtt <= deadline + LATE_SLACK:
                outcomes.append(ProbeOutcome(True, rtt))
            else:  # arrived after its deadline, read only now because the loop woke late
                outcomes.append(ProbeOutcome(False, None, f"late ({rtt * 1000:.0f} ms)"))
        return outcomes

    def next_deadline(self) -> float | None:
        """When the oldest probe still waiting is due (probes are sent in deadline order)."""
        for _sent, _wall, deadline in self.pending.values():
            return deadline
        return None

    def expire(self, now: float) -> Sequence[ProbeOutcome]:
        """The probes due by `now` that no answer has come for: lost. Call `collect` first."""
        due = []
        for seq, (_sent, _wall, deadline) in self.pending.items():
            if deadline > now + LATE_SLACK:
                break
            due.append(seq)
        for seq in due:
            del self.pending[seq]
        return [_TIMEOUT] * len(due) if due else ()

    async def probe(self) -> ProbeOutcome:
        """One probe on its own (failoverctl probe): wait for the answer or the timeout."""
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(self.sock.fileno(), readable.set)
        try:
            deadline = time.monotonic() + self.timeout
            lost = self.send(deadline)
            if lost:
                return lost[-1]
            while self.pending:
                readable.clear()
                for out in self.collect():
                    return out
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    async with asyncio.timeout(left):
                        await readable.wait()
                except TimeoutError:
                    pass
            for out in self.collect():
                return out
            return _TIMEOUT
        finally:
            loop.remove_reader(self.sock.fileno())
            self.pending.clear()

    def close(self) -> None:
        self.sock.close()
        self.pending.clear()
