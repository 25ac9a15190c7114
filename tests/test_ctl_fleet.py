"""failoverctl's fleet command: sent at once, waits for the sites online by their retained statuses, and
without the statuses' end marker (an ACL lacking fleet/sync) takes every reply within --wait."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

import keys
import pytest

from failoverd import ctl


class Message:
    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic, self.payload = topic, payload


class Broker:
    """A broker as the operator's client sees it: retained statuses on subscription, the marker echoed
    (or not, as under an ACL without fleet/sync), and each online site's reply to the command."""

    def __init__(self, statuses: dict[str, dict[str, Any]], echo_marker: bool = True) -> None:
        self.statuses, self.echo_marker = statuses, echo_marker
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.published: list[str] = []

    async def __aenter__(self) -> Broker:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        return None

    async def subscribe(self, topic: str, qos: int = 0) -> None:
        if topic.endswith("/+/status"):
            for site, doc in self.statuses.items():
                self.queue.put_nowait(Message(f"failoverd/{site}/status", json.dumps(doc).encode()))

    async def unsubscribe(self, topic: str) -> None:
        pass

    async def publish(self, topic: str, payload: str, qos: int = 0) -> None:
        self.published.append(topic)
        if "/fleet/sync/" in topic and self.echo_marker:
            self.queue.put_nowait(Message(topic, payload.encode()))
        if topic == "failoverd/fleet/cmd":
            rid = json.loads(payload)["id"]
            for site, doc in self.statuses.items():
                if doc["online"]:  # a gateway that is there answers
                    reply = {"id": rid, "site": site, "ok": True, "text": "released o1"}
                    self.queue.put_nowait(Message(f"failoverd/{site}/reply", json.dumps(reply).encode()))

    @property
    def messages(self) -> AsyncIterator[Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        while True:
            yield await self.queue.get()


def fleet(now: float) -> dict[str, dict[str, Any]]:
    live = {"online": True, "at": now, "clock": "sane", "classes": {}}
    return {
        "north": {**live, "site": "north"},
        "south": {**live, "site": "south"},
        "east": {"online": False, "site": "east", "at": now, "why": "connection lost"},
        "west": {**live, "site": "west", "at": now - 3600},  # stale
    }


def args(tmp_path: Path, wait: float) -> Any:
    key, _ = keys.operator_keys(tmp_path, "noc")
    return ctl.build_parser().parse_args(
        ["--mqtt", "broker", "--key-file", str(key), "--wait", str(wait), "--fleet", "release", "--all"]
    )


async def test_a_fleet_command_goes_at_once_and_waits_for_the_sites_online(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Broker(fleet(time.time()))
    monkeypatch.setattr(ctl, "broker_client", lambda *_: broker)
    start = time.monotonic()
    answers = await ctl.remote(args(tmp_path, wait=20), {"cmd": "release", "all": True})
    assert time.monotonic() - start < 5  # not --wait: both online sites answered
    # The command is published right after the marker, not after the statuses were read.
    assert broker.published[-1] == "failoverd/fleet/cmd" and "/fleet/sync/" in broker.published[-2]
    assert answers.expected == {"north", "south"} and answers.not_awaited == 2
    assert sorted(r["site"] for r in answers.replies) == ["north", "south"] and answers.silent(None) == []


async def test_without_the_marker_a_fleet_command_takes_every_reply_within_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Broker(fleet(time.time()), echo_marker=False)
    monkeypatch.setattr(ctl, "broker_client", lambda *_: broker)
    start = time.monotonic()
    answers = await ctl.remote(args(tmp_path, wait=0.5), {"cmd": "release", "all": True})
    assert time.monotonic() - start >= 0.5
    assert answers.expected is None and sorted(r["site"] for r in answers.replies) == ["north", "south", "west"]
