"""MQTT to a broker at an IPv6 address: the policy's host forms, the status, the session's socket on its uplink."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from pathlib import Path

import aiomqtt
import pytest

from failoverd.control import mqtt
from failoverd.control.engineonly import EngineGateway
from failoverd.control.mqtt import Fleet
from failoverd.ctl import EXIT_REFUSED, main
from failoverd.engine.state import Health
from failoverd.errors import PolicyError
from failoverd.policy import parse_policy_text
from failoverd.statedir import StateDir

SO_BINDTODEVICE_LEN = 16  # IFNAMSIZ


def policy(mqtt_line: str) -> str:
    return (
        "site: north\n"
        "uplinks:\n"
        '  - {name: fiber, interface: fiber0, next_hop: 198.18.0.1, next_hop6: "2001:db8:1::1"}\n'
        "  - {name: loop, interface: lo, point_to_point: true}\n"
        "classes: [{name: all, path: [fiber, loop]}]\n"
        f"control: {{mqtt: {mqtt_line}}}\n"
    )


@pytest.mark.parametrize("host", ['"2001:db8::10"', '"[2001:db8::10]"', "'[2001:db8::10]'", " 2001:db8::10"])
def test_the_broker_may_be_written_bare_or_in_brackets(host: str) -> None:
    pol = parse_policy_text(policy(f"{{enabled: true, host: {host}}}"), "t.yaml")
    assert pol.control.mqtt.host == "2001:db8::10"


@pytest.mark.parametrize(
    ("host", "says"),
    [
        ("broker.example:1884", "not a name or an address (a port goes in port:)"),
        ('"[2001:db8::10]:1884"', "brackets hold an IPv6 address"),
        ('"[broker.example]"', "brackets hold an IPv6 address"),
        ('"fe80::1"', "MQTT broker fe80::1 is link-local: name the uplink whose link it is on"),
    ],
)
def test_a_host_that_is_not_one_is_refused(host: str, says: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy_text(policy(f"{{enabled: true, host: {host}}}"), "t.yaml")
    [problem] = info.value.problems
    assert says in problem.message and problem.path.startswith("control.mqtt."), problem


def test_a_broker_on_a_named_uplink_of_another_family_is_refused() -> None:
    text = policy('{enabled: true, host: "fe80::1", uplink: fiber}').replace(', next_hop6: "2001:db8:1::1"', "")
    with pytest.raises(PolicyError) as info:
        parse_policy_text(text, "t.yaml")
    [problem] = info.value.problems
    assert problem.message == 'MQTT broker fe80::1 is IPv6, and uplink "fiber" carries IPv4 only', problem
    assert problem.path == "control.mqtt.host", problem


def test_a_link_local_broker_on_a_named_uplink_is_accepted() -> None:
    pol = parse_policy_text(policy('{enabled: true, host: "fe80::1", uplink: fiber}'), "t.yaml")
    assert pol.control.mqtt.host == "fe80::1"
    assert mqtt._zoned("fe80::1", pol.uplinks["fiber"]) == "fe80::1%fiber0"
    assert mqtt._zoned("2001:db8::10", pol.uplinks["fiber"]) == "2001:db8::10"
    assert mqtt._zoned("broker.example", pol.uplinks["fiber"]) == "broker.example"


def test_the_status_names_an_ipv6_broker_in_brackets(tmp_path: Path) -> None:
    gw = EngineGateway(policy('{enabled: true, host: "[2001:db8::10]"}'))
    fleet = Fleet(gw, gw.policy.control.mqtt, StateDir(tmp_path))
    assert fleet.status()["broker"] == "[2001:db8::10]:1883"


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK needs CAP_NET_ADMIN, SO_BINDTODEVICE CAP_NET_RAW")
@pytest.mark.parametrize(("address", "device"), [("::1", b"lo"), ("127.0.0.1", b"")])
async def test_the_sessions_socket_leaves_by_its_uplink_from_the_first_packet(address: str, device: bytes) -> None:
    """Marked as every family is; an IPv6 one bound to the uplink's device as well (an IPv4 one is not:
    bound, the kernel would take the broker for a neighbour on the link)."""
    up = parse_policy_text(policy("{enabled: true}"), "t.yaml").uplinks["loop"]
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((address, 0))
        listener.listen()
        client = aiomqtt.Client(address, listener.getsockname()[1])
        mqtt._steer_before_connect(client, up)
        client._client.connect_async(address, listener.getsockname()[1])  # where aiomqtt's connect puts them
        sock = client._client._create_socket_connection()
        try:
            assert sock.getpeername()[:2] == listener.getsockname()[:2]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == up.fwmark
            bound = sock.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, SO_BINDTODEVICE_LEN)
            assert bound.rstrip(b"\0") == device
        finally:
            sock.close()


def test_failoverctl_refuses_a_broker_it_cannot_read_before_trying_it(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--mqtt", "[broker.example]:1883", "--key-file", "/nonexistent/noc.key", "--site", "north", "status"]
    assert main(argv) == EXIT_REFUSED
    assert "--mqtt: '[broker.example]:1883': brackets hold an IPv6 address" in capsys.readouterr().err


DUAL_STACK = (
    "site: north\n"
    "uplinks:\n"
    '  - {name: fiber, interface: fiber0, next_hop: 198.18.0.1, next_hop6: "2001:db8:1::1"}\n'
    '  - {name: mobile, interface: mob1, next_hop: 198.18.2.1, next_hop6: "2001:db8:2::1"}\n'
    "classes: [{name: all, path: [fiber, mobile]}]\n"
    'control: {mqtt: {enabled: true, host: "2001:db8::10", uplink: fiber}}\n'
)


def health(gw: EngineGateway, up: set[str]) -> None:
    """The engine's view: the uplinks in `up` UP, every other one DOWN."""
    uplinks = {
        n: dataclasses.replace(u, health=Health.UP if n in up else Health.DOWN) for n, u in gw.state.uplinks.items()
    }
    gw._state = dataclasses.replace(gw.state, uplinks=uplinks)


async def test_an_ipv6_broker_is_reached_over_an_ipv6_twin_only(tmp_path: Path) -> None:
    """A dual-stack uplink is two engine uplinks, and only the /v6 twin's table routes IPv6: the session
    goes over the named uplink's IPv6 twin, or another uplink's, never over an IPv4 twin's mark."""
    gw = EngineGateway(DUAL_STACK)
    fleet = Fleet(gw, gw.policy.control.mqtt, StateDir(tmp_path))
    health(gw, {"fiber", "fiber/v6", "mobile", "mobile/v6"})
    fleet._client()
    assert fleet.via == "fiber/v6"
    health(gw, {"fiber", "mobile", "mobile/v6"})  # the fiber's IPv6 dead, its IPv4 well (and first)
    fleet._client()
    assert fleet.via == "mobile/v6"

    # No IPv6 twin usable: the session rides the main table, and is not moved for an IPv4 twin that is
    # usable (it would be made unmarked again, and moved again, for as long as IPv6 stays down).
    health(gw, {"fiber", "mobile"})
    fleet._client()
    assert fleet.via is None
    follow = asyncio.create_task(fleet._follow())
    try:
        [feed] = gw.feeds
        feed.pending.append({"kind": "uplink", "uplink": "mobile", "to": "UP"})
        feed.ready.set()
        await asyncio.sleep(0.05)
        assert not fleet.path_lost.is_set()
        health(gw, {"fiber", "mobile", "mobile/v6"})
        feed.pending.append({"kind": "uplink", "uplink": "mobile/v6", "to": "UP"})
        feed.ready.set()
        await asyncio.sleep(0.05)
        assert fleet.path_lost.is_set()  # now one is: moved onto it
    finally:
        follow.cancel()
