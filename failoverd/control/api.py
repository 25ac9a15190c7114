"""What control (the local socket, MQTT) may ask of the daemon: one declared interface, nothing else."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.state import EngineState
from failoverd.policy.model import Policy

OperatorCommand = ev.ForceClass | ev.DrainUplink | ev.PinProfile | ev.Release | ev.RunDrill | ev.AckAlarm


class Feed:
    """One subscriber's view of the history as it is written: a bounded queue (the oldest go first when a
    slow reader falls behind, e.g. MQTT while the broker is out of reach) and an event that says there is more."""

    def __init__(self, keep: int) -> None:
        self.pending: deque[dict[str, Any]] = deque(maxlen=keep)
        self.ready = asyncio.Event()

    def put(self, record: dict[str, Any]) -> None:
        self.pending.append(record)
        self.ready.set()


class Gateway(Protocol):
    """The daemon as control sees it (as GoBGP's server API is both the CLI's and config reload's).

    Reads are snapshots of the engine's frozen state; everything that changes state goes through the
    engine's one event queue (`submit`) or through a reload, which asks every service in turn."""

    @property
    def policy(self) -> Policy: ...

    @property
    def state(self) -> EngineState: ...

    def status(self) -> dict[str, Any]: ...

    def history(self, last: int) -> list[dict[str, Any]]: ...

    def clock_report(self) -> dict[str, Any]: ...

    async def submit(self, command: OperatorCommand) -> fx.CommandReply: ...

    async def reload(self) -> dict[str, Any]: ...

    def record(self, record: dict[str, Any]) -> None: ...

    async def read_meters(self) -> None:
        """Read the metered uplinks' counters into the history now (a report's period ends now)."""

    def alarm(self, event: ev.ServiceAlarm) -> None:
        """A condition only the shell sees, for the engine to raise or clear (engine/alarms.py)."""

    def subscribe(self, keep: int) -> Feed: ...
