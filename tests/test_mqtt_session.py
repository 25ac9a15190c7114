"""The MQTT session ends at once when the uplink it rides is lost, whatever its tasks were doing."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from failoverd.control.engineonly import EngineGateway
from failoverd.control.mqtt import Fleet, PathLost
from failoverd.ctl import broker_client, build_parser
from failoverd.engine import events as ev
from failoverd.statedir import StateDir


class Broker:
    """A client whose broker stops acknowledging: what a session sees after a fiber cut."""

    def __init__(self) -> None:
        self.reachable = True
        self.published: list[str] = []

    async def subscribe(self, topic: str, qos: int) -> None:
        pass

    async def publish(self, topic: str, payload: str, qos: int = 0, retain: bool = False) -> None:
        self.published.append(topic)
        if not self.reachable:  # the acknowledgement will not come: aiomqtt gives up after its timeout
            await asyncio.sleep(3)
            raise aiomqtt.MqttError("Operation timed out")

    @property
    def messages(self) -> AsyncIterator[Any]:
        return self._none()

    async def _none(self) -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield None


async def test_a_lost_path_ends_the_session_at_once(tmp_path: Path) -> None:
    d = EngineGateway(
        "site: north\nuplinks: [{name: a, interface: eth0, next_hop: 198.18.0.1}]\nclasses: [{name: all, path: [a]}]\n"
        "control: {mqtt: {enabled: true}}\n"
    )
    fleet = Fleet(d, d.policy.control.mqtt, StateDir(tmp_path))
    broker = Broker()
    session = asyncio.create_task(fleet._session(broker))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    broker.reachable = False
    # As _follow does for an uplink record: the events publisher is woken by the very record that
    # says the session's path is gone.
    fleet.events.append({"kind": "uplink", "uplink": "a", "to": "DOWN"})
    fleet.wake.set()
    fleet.path_lost.set()
    lost = time.monotonic()
    with pytest.raises(PathLost):
        await session
    assert time.monotonic() - lost < 1.0  # not after a publish over the dead path timed out


async def test_sessions_turn_nagle_off(tmp_path: Path) -> None:
    """The gateway's session and failoverctl's: TCP_NODELAY on the socket as the kernel holds it (with Nagle,
    a reply written after an acknowledgement waited for the broker's delayed ACK; bench/fleet.py)."""

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # CONNECT
        writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted
        await writer.drain()
        await reader.read(1024)  # until the client goes

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    d = EngineGateway(
        "site: north\nuplinks: [{name: a, interface: eth0, next_hop: 198.18.0.1}]\nclasses: [{name: all, path: [a]}]\n"
        f"control: {{mqtt: {{enabled: true, host: 127.0.0.1, port: {port}}}}}\n"
    )
    fleet = Fleet(d, d.policy.control.mqtt, StateDir(tmp_path))
    unsteered = fleet._client()  # no uplink usable yet: over the main table
    assert fleet.via is None
    d.feed(ev.CarrierChanged("a", True))
    steered = fleet._client()  # over uplink a: its own socket, marked (_steer_before_connect)
    assert fleet.via == "a"
    ctl = broker_client(build_parser().parse_args(["--mqtt", f"127.0.0.1:{port}", "--site", "north", "status"]), "x")
    async with server:
        for client in (unsteered, steered, ctl):
            async with client:
                sock = client._client.socket()
                assert isinstance(sock, socket.socket)
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                if client is steered:
                    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == d.policy.uplinks["a"].fwmark
