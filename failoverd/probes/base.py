"""What every probe shares: marked sockets, the outcome record, and the session factory."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, Protocol

from failoverd.policy.model import ProbeSpec, UplinkSpec


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    ok: bool
    rtt: float | None  # seconds
    detail: str = ""


class Session(Protocol):
    """A long-lived prober for one target: `probe()` sends one probe and waits at most its timeout."""

    async def probe(self) -> ProbeOutcome: ...

    def close(self) -> None: ...


def family_of(address: str) -> int:
    return socket.AF_INET6 if ip_address(address).version == 6 else socket.AF_INET


def marked_socket(family: int, kind: int, proto: int, mark: int) -> socket.socket:
    """A non-blocking socket whose packets carry the uplink's mark, so its rule steers them out of it.

    SO_BINDTODEVICE alone misleads: with no route in the device's table the kernel would treat every
    target as on-link and ARP for it. The mark selects the uplink's own table instead.
    """
    s = socket.socket(family, kind, proto)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


Done = Callable[[ProbeOutcome], None]


class DatagramSession:
    """Shared machinery for request/response datagram probes matched by a sequence number.

    Callbacks, not a task and a future per probe: at 160 probes/s the daemon's CPU went mostly into
    asyncio's per-probe machinery. `send(done)` fires one probe and calls `done` exactly once, from
    the socket's reader with the answer or from a timer at the timeout.
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.pending: dict[int, tuple[float, asyncio.TimerHandle, Done]] = {}
        self.seq = 0
        self.loop.add_reader(sock.fileno(), self._readable)

    def request(self) -> tuple[bytes, Any, int]:
        """The next probe: payload, destination address, sequence number its answer will carry."""
        raise NotImplementedError

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFF
        return self.seq

    def match(self, data: bytes, addr: tuple[str, int]) -> int | None:
        """The sequence number this datagram answers, or None if it is not an answer of ours."""
        raise NotImplementedError

    def _readable(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # an ICMP error queued on the socket: the probe will time out
            now = time.monotonic()
            seq = self.match(data, addr)
            if seq is None:
                continue
            entry = self.pending.pop(seq, None)
            if entry is not None:
                entry[1].cancel()
                entry[2](ProbeOutcome(True, now - entry[0]))

    def _expire(self, seq: int) -> None:
        entry = self.pending.pop(seq, None)
        if entry is not None:
            entry[2](ProbeOutcome(False, None, "timeout"))

    def send(self, done: Done) -> None:
        """Fire the next probe; `done(outcome)` follows once, never from inside this call."""
        try:
            payload, dest, seq = self.request()
        except OSError as exc:  # nothing to send from (no address yet): a loss, with the reason
            self.loop.call_soon(done, ProbeOutcome(False, None, exc.strerror or str(exc)))
            return
        stale = self.pending.pop(seq, None)
        if stale is not None:  # the sequence wrapped onto a probe still waiting: that one is lost
            stale[1].cancel()
            self.loop.call_soon(stale[2], ProbeOutcome(False, None, "timeout"))
        start = time.monotonic()
        try:
            self.sock.sendto(payload, dest)
        except OSError as exc:
            # No route, network down: the answer is known at once, but it is still a loss.
            self.loop.call_soon(done, ProbeOutcome(False, None, exc.strerror or str(exc)))
            return
        self.pending[seq] = (start, self.loop.call_later(self.timeout, self._expire, seq), done)

    async def probe(self) -> ProbeOutcome:
        fut: asyncio.Future[ProbeOutcome] = self.loop.create_future()

        def done(out: ProbeOutcome) -> None:
            if not fut.done():  # the waiter may have been cancelled (shutdown)
                fut.set_result(out)

        self.send(done)
        return await fut

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for _, timer, _done in self.pending.values():
            timer.cancel()
        self.pending.clear()


SessionFactory = Callable[[ProbeSpec, UplinkSpec], Session]


def open_session(spec: ProbeSpec, uplink: UplinkSpec) -> Session:
    """Open the prober for one probe of an uplink (inside a running event loop)."""
    from failoverd.probes import arp, dns, http, icmp, tcp, udp_echo  # noqa: PLC0415 (avoid cycles)

    factories: dict[str, SessionFactory] = {
        "udp-echo": udp_echo.UdpEchoSession,
        "icmp": icmp.IcmpSession,
        "tcp": tcp.TcpSession,
        "dns": dns.DnsSession,
        "http": http.HttpSession,
        "arp-nexthop": arp.ArpSession,
    }
    return factories[spec.kind](spec, uplink)
