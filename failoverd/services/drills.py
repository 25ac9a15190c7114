"""The drill service: tells the engine when each weekly drill window next opens, in monotonic time.

The engine decides everything else about a drill (due, safe, checks, verdict) and its activation and
release run as the engine service's standby commands. What needs the wall clock is here: every
REFRESH seconds (and at once on a reload) the next opening of each window is converted with the
current wall and monotonic clocks and sent again when it changed, so that a wall-clock step moves
the deadline. Whether the wall clock deserves trust is the clock checker's verdict, which the engine
holds: a window drill waits while the clock is not trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, ClassVar

from failoverd.drillwindows import window_event
from failoverd.engine import events as ev
from failoverd.observe.logging import get as get_logger
from failoverd.policy.model import Policy
from failoverd.services.base import Applied, EngineView, Inbox, Reconfigured

log = get_logger("failoverd")
REFRESH = 60.0  # s: how often windows are converted again (a clock step moves them by as much as it steps)
MOVED = 1.0  # s: a conversion that moved an opening by more than this is sent again


class DrillService:
    name: ClassVar[str] = "drills"

    def __init__(self, view: EngineView, inbox: Inbox) -> None:
        self.view = view
        self.inbox = inbox
        self.sent: dict[str, ev.DrillWindow] = {}
        self.changed = asyncio.Event()

    async def run(self) -> None:
        while True:
            for event in self.openings(self.view.policy, time.time(), time.monotonic()):
                log.info("drill-window", uplink=event.uplink, opens_in_s=round(event.opens - time.monotonic()))
                await self.inbox.put(event)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH):
                    await self.changed.wait()
            self.changed.clear()

    def openings(self, policy: Policy, wall: float, mono: float) -> list[ev.DrillWindow]:
        """The window events that are new or moved since they were last sent."""
        out = []
        for name, spec in policy.drills.items():
            if spec.window is None:
                continue
            event = window_event(name, spec.window, wall, mono)
            last = self.sent.get(name)
            if last is None or last.wall_opens != event.wall_opens or abs(last.opens - event.opens) > MOVED:
                self.sent[name] = event
                out.append(event)
        for name in [n for n in self.sent if n not in policy.drills]:
            del self.sent[name]
        return out

    async def reconfigure(self, policy: Policy) -> Reconfigured:
        self.sent.clear()  # a changed window is sent anew
        self.changed.set()
        return Applied(f"{len(policy.drills)} drills")

    def status(self) -> dict[str, Any]:
        return {"windows": {n: round(e.opens - time.monotonic()) for n, e in self.sent.items()}}
