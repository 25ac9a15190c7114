"""Probe answers count only when an off-path sender could not have forged them by counting."""

from __future__ import annotations

import itertools
import socket
import struct
from types import SimpleNamespace
from typing import Any

import pytest

from failoverd.policy.model import ProbeSpec
from failoverd.probes import dns, icmp


def plain_socket(family: int, kind: int, proto: int, mark: int) -> socket.socket:
    # SO_MARK needs CAP_NET_ADMIN and a raw socket CAP_NET_RAW: matching needs neither.
    return socket.socket(family, socket.SOCK_DGRAM, 0)


@pytest.fixture(autouse=True)
def no_privileges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dns, "marked_socket", plain_socket)
    monkeypatch.setattr(icmp, "marked_socket", plain_socket)


UPLINK: Any = SimpleNamespace(fwmark=0x100, interface="up0")


def test_dns_answers_count_only_from_the_server_asked() -> None:
    s = dns.DnsSession(ProbeSpec("dns", "2001:DB8::53", 0.5, 0.2), UPLINK)
    try:
        qid = s.request()[2]
        answer = struct.pack("!HHHHHH", qid, 0x8180, 1, 0, 0, 0)
        assert s.match(answer, ("2001:db8::53", 53, 0, 0)) == qid  # the address as recvfrom spells it
        assert s.match(answer, ("2001:db8::66", 53, 0, 0)) is None  # someone else, knowing the id
        assert s.match(answer, ("2001:db8::53", 5353, 0, 0)) is None
        assert s.match(answer[:11], ("2001:db8::53", 53, 0, 0)) is None
    finally:
        s.sock.close()


def test_identifiers_and_sequence_numbers_do_not_count_from_a_known_start() -> None:
    spec = ProbeSpec("icmp", "198.51.100.1", 0.5, 0.2)
    sessions = [icmp.IcmpSession(spec, UPLINK) for _ in range(64)]
    try:
        idents = [s.ident for s in sessions]
        firsts = [s.request()[2] for s in sessions]
        # Counting (from the pid, or from 1) gives consecutive identifiers and the same first
        # number every time; random ones collide or run in a row only by rare chance.
        assert sum(b - a == 1 for a, b in itertools.pairwise(idents)) < 4
        assert len(set(firsts)) > 48
    finally:
        for s in sessions:
            s.sock.close()
