"""arp-nexthop counts only a reply that came after its request went out."""

from __future__ import annotations

import socket
import struct
import time
from collections import deque

import pytest

from failoverd.probes import arp
from failoverd.probes.base import DatagramSession

ROUTER, OURS = socket.inet_aton("192.0.2.1"), socket.inet_aton("192.0.2.2")
ROUTER_MAC, OUR_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
# The router's reply, as the packet socket hears it (SOCK_DGRAM: from the ARP header on).
REPLY = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, ROUTER_MAC, ROUTER, OUR_MAC, OURS)


class LinkSocket:
    """The session's packet socket, as a queue: what the link has delivered and what was sent."""

    def __init__(self) -> None:
        self.queue: deque[bytes] = deque()
        self.sent: list[bytes] = []

    def setsockopt(self, *_: object) -> None:
        pass

    def recv(self, _size: int) -> bytes:
        if not self.queue:
            raise BlockingIOError
        return self.queue.popleft()

    def recvmsg(self, _size: int, _ancillary: int) -> tuple[bytes, list[tuple[int, int, bytes]], int, tuple[str, int]]:
        return self.recv(0), [], 0, ("up0", arp.ETH_P_ARP)

    def sendto(self, data: bytes, _dest: object) -> int:
        self.sent.append(data)
        return len(data)


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> tuple[arp.ArpSession, LinkSocket]:
    # The session without its packet socket (CAP_NET_RAW) and without an interface to ask for our address.
    monkeypatch.setattr(arp, "_own_ipv4", lambda _ifname: OURS)
    link = LinkSocket()
    s = arp.ArpSession.__new__(arp.ArpSession)
    DatagramSession.__init__(s, link, 0.2)  # type: ignore[arg-type]
    s.ifname, s.target, s.mac = "up0", ROUTER, OUR_MAC
    return s, link


def test_a_reply_queued_before_the_request_went_out_is_not_its_answer(
    session: tuple[arp.ArpSession, LinkSocket],
) -> None:
    """The kernel resolved the router a moment before (another probe's packet needed it), and the
    router has been silent since: its old reply, still queued, must not pass the router as alive."""
    s, link = session
    link.queue.append(REPLY)
    assert s.send(time.monotonic() + 0.2) == ()
    assert len(link.sent) == 1 and link.sent[0][6:8] == b"\x00\x01"  # our request went out
    assert s.collect() == []  # nothing has answered it
    assert [o.detail for o in s.expire(time.monotonic() + 1)] == ["timeout"]


def test_a_reply_after_the_request_is_its_answer(session: tuple[arp.ArpSession, LinkSocket]) -> None:
    s, link = session
    assert s.send(time.monotonic() + 0.2) == ()
    link.queue.append(REPLY)
    [answer] = s.collect()
    assert answer.ok and answer.rtt is not None and answer.rtt < 0.2
