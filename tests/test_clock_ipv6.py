"""IPv6 time servers: asked bound to the uplink's device (a link-local one in its zone); chrony's IPv6 view."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from failoverd.clock import monitor, sntp
from failoverd.clock.monitor import ClockMonitor
from failoverd.clock.sntp import Reply
from failoverd.clock.sources import parse_tracking
from failoverd.errors import PolicyError
from failoverd.policy import parse_policy_text

ROOT = Path(__file__).resolve().parent.parent
UPLINKS = """
site: t
uplinks:
  - {name: fiber, interface: fiber0, next_hop: 192.0.2.1, next_hop6: "2001:db8:1::1"}
  - {name: mobile, interface: mob1, next_hop: 192.0.2.5, next_hop6: "2001:db8:2::1"}
classes: [{name: all, path: [fiber, mobile]}]
clock:
  chrony: false
  servers:
"""


def clock_policy(*servers: str) -> str:
    return UPLINKS + "".join(f"    - {s}\n" for s in servers)


@pytest.fixture
def server6() -> Iterator[int]:
    """An SNTP server on the IPv6 loopback serving this machine's own time (the liar with offset 0)."""
    port = 12361
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.liar", "--bind", "::1", "--port", str(port), "--offset", "0"], cwd=ROOT
    )
    time.sleep(0.8)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


async def test_an_ipv6_server_is_asked_over_ipv6(server6: int) -> None:
    reply = await sntp.query("::1", server6, timeout=2)
    assert reply.ok and abs(reply.offset) < 0.5 and reply.server == "::1", reply


async def test_a_name_is_resolved_and_a_bad_one_is_a_failed_query(server6: int) -> None:
    reply = await sntp.query("localhost", 1, timeout=0.5)  # resolved; nobody serves port 1
    assert not reply.ok and reply.error != "", reply
    reply = await sntp.query("no-such-host.invalid", 123, timeout=0.5)
    assert not reply.ok and reply.error, reply


Asked = dict[str, dict[str, Any]]


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> Asked:
    """What each query was given (address, mark, device), instead of asking."""
    seen: Asked = {}

    async def query(server: str, port: int = 123, timeout: float = 1.0, **how: Any) -> Reply:
        seen[server] = {"port": port, **how}
        return Reply(server, False, mono=time.monotonic(), error="timeout")

    monkeypatch.setattr(monitor, "query", query)
    return seen


async def test_each_server_is_asked_over_its_uplink_an_ipv6_one_bound_to_its_device(asked: Asked) -> None:
    pol = parse_policy_text(
        clock_policy(
            "{address: 198.51.100.1, uplink: fiber}",
            '{address: "2001:db8::123", uplink: mobile, port: 1123}',
            '{address: "fe80::123", uplink: fiber}',
            '{address: "2001:db8::124"}',
        ),
        "t.yaml",
    )
    await ClockMonitor(pol, usable=lambda: list(pol.uplinks)).round()
    # Each family over its own twin (policy/compile.py): only the /v6 twin's table holds IPv6 routes.
    fiber, fiber6, mobile6 = (pol.uplinks[n].fwmark for n in ("fiber", "fiber/v6", "mobile/v6"))
    assert asked == {
        # IPv4: the mark alone (SO_BINDTODEVICE would make the kernel ARP for the server on the link)
        "198.51.100.1": {"port": 123, "mark": fiber, "device": None},
        "2001:db8::123": {"port": 1123, "mark": mobile6, "device": "mob1"},
        "fe80::123%fiber0": {"port": 123, "mark": fiber6, "device": "fiber0"},  # in the uplink's zone
        # No uplink named: the first usable one of its family, the fiber's IPv6 twin, not the fiber.
        "2001:db8::124": {"port": 123, "mark": fiber6, "device": "fiber0"},
    }


async def test_an_uplink_down_its_servers_move_but_not_one_on_its_link(asked: Asked) -> None:
    pol = parse_policy_text(
        clock_policy('{address: "2001:db8::123", uplink: fiber}', '{address: "fe80::123", uplink: fiber}'),
        "t.yaml",
    )
    mon = ClockMonitor(pol, usable=lambda: ["mobile", "mobile/v6"])
    await mon.round()
    fiber6, mobile6 = pol.uplinks["fiber/v6"].fwmark, pol.uplinks["mobile/v6"].fwmark
    assert asked["2001:db8::123"] == {"port": 123, "mark": mobile6, "device": "mob1"}
    # The mobile uplink's link has no fe80::123 of the fiber's router: still asked on its own link.
    assert asked["fe80::123%fiber0"] == {"port": 123, "mark": fiber6, "device": "fiber0"}
    assert mon.via == {"2001:db8::123": "mobile/v6", "fe80::123": "fiber/v6"}


async def test_a_server_moves_to_a_twin_of_its_family_not_the_first_usable_uplink(asked: Asked) -> None:
    """The fiber's IPv6 dead, its IPv4 well: the fiber's IPv4 twin is usable and first, but its table
    has no IPv6 route; the server goes to the mobile uplink's IPv6 twin."""
    pol = parse_policy_text(clock_policy('{address: "2001:db8::123", uplink: fiber}'), "t.yaml")
    mon = ClockMonitor(pol, usable=lambda: ["fiber", "mobile", "mobile/v6"])
    await mon.round()
    assert asked["2001:db8::123"] == {"port": 123, "mark": pol.uplinks["mobile/v6"].fwmark, "device": "mob1"}
    assert mon.via == {"2001:db8::123": "mobile/v6"}
    # No usable uplink of its family at all: asked over its own, as when nothing is usable.
    asked.clear()
    await ClockMonitor(pol, usable=lambda: ["fiber", "mobile"]).round()
    assert asked["2001:db8::123"] == {"port": 123, "mark": pol.uplinks["fiber/v6"].fwmark, "device": "fiber0"}


@pytest.mark.parametrize(
    ("server", "says"),
    [
        ('{address: "fe80::123"}', "time server fe80::123 is link-local: name the uplink whose link it is on"),
        (
            '{address: "fe80::123%mob1", uplink: fiber}',
            'zone "mob1" is not uplink "fiber"\'s interface "fiber0"',
        ),
    ],
)
def test_a_link_local_server_needs_its_uplink(server: str, says: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy_text(clock_policy(server), "t.yaml")
    [problem] = info.value.problems
    assert says in problem.message and problem.path.startswith("clock.servers.0."), problem


def test_a_link_local_server_in_its_uplinks_zone_is_accepted() -> None:
    pol = parse_policy_text(clock_policy('{address: "fe80::123%fiber0", uplink: fiber}'), "t.yaml")
    assert pol.clock.servers[0].address == "fe80::123%fiber0"


# `chronyc -c tracking` of chronyd 4.3 (Debian 12), run by tests/integration/test_clock6.py: following
# an IPv6 server, and before it has any.
TRACKING_IPV6 = (
    "2A752757,2001:db8:ff::123,4,1796224576.636939910,0.000002116,0.000000117,0.000001012,0.256,0.007,8.905,"
    "0.000028548,0.000004245,0.3,Normal\n"
)
TRACKING_NONE = (
    "00000000,,0,0.000000000,0.000000000,0.000000000,0.000000000,0.000,0.000,0.000,1.000000000,1.000000000,"
    "0.0,Not synchronised\n"
)


def test_chrony_following_an_ipv6_server() -> None:
    view = parse_tracking(TRACKING_IPV6)
    assert view is not None and view.synced and view.ref == "2001:db8:ff::123" and view.stratum == 4, view
    assert view.offset == -0.000002116  # the system clock is that much ahead of true time


def test_chrony_with_no_reference_is_not_synced() -> None:
    view = parse_tracking(TRACKING_NONE)
    assert view is not None and not view.synced, view
