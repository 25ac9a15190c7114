"""The probe kinds a policy may name, each with the session that sends it."""

from __future__ import annotations

from collections.abc import Callable

from failoverd.policy.model import ProbeSpec, UplinkSpec
from failoverd.probes import arp, dns, http, icmp, ndp, tcp, udp_echo
from failoverd.probes.base import Session

SessionFactory = Callable[[ProbeSpec, UplinkSpec], Session]

KINDS: dict[str, SessionFactory] = {
    "udp-echo": udp_echo.UdpEchoSession,
    "icmp": icmp.IcmpSession,
    "tcp": tcp.TcpSession,
    "dns": dns.DnsSession,
    "http": http.HttpSession,
    "arp-nexthop": arp.ArpSession,
    "ndp-nexthop": ndp.NdpSession,
}


def open_session(spec: ProbeSpec, uplink: UplinkSpec) -> Session:
    """Open the prober for one probe of an uplink (inside a running event loop)."""
    return KINDS[spec.kind](spec, uplink)
