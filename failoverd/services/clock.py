"""The clock service: judge the clock every interval and at once after a step; tell the engine when the verdict moves.

Nothing here feeds a timer: the engine runs on the monotonic clock whatever the verdict says.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, ClassVar

from failoverd.clock.monitor import ClockMonitor
from failoverd.engine import events as ev
from failoverd.engine.decide import usable
from failoverd.observe.logging import get as get_logger
from failoverd.policy.model import Policy
from failoverd.services.base import Applied, EngineView, Inbox, Reconfigured
from failoverd.services.history import History
from failoverd.statedir import StateDir

log = get_logger("failoverd")
STEP_WATCH = 1.0  # s: how often the wall clock is compared with the monotonic clock


class ClockService:
    name: ClassVar[str] = "clock"

    def __init__(self, view: EngineView, inbox: Inbox, history: History, state: StateDir) -> None:
        self.view = view
        self.inbox = inbox
        self.history = history
        self.monitor = ClockMonitor(view.policy, state, usable=self._usable)
        self.sources_changed = asyncio.Event()

    def _usable(self) -> list[str]:
        return [n for n in self.view.policy.uplinks if usable(self.view.state, n)]

    async def run(self) -> None:
        last: tuple[str, float | None, tuple[str, ...]] | None = None
        next_round = time.monotonic()
        while True:
            if not self._has_sources():
                await self.sources_changed.wait()  # a reload may add time servers
                self.sources_changed.clear()
                continue
            steps = self.monitor.poll_steps()
            for st in steps:
                log.warning("clock-step", delta_s=round(st.delta, 6), explained=st.explained, why=st.why)
                record = {"kind": "clock-step", "delta_s": st.delta, "explained": st.explained, "why": st.why}
                self.history.add(record, time.monotonic())
            if steps or time.monotonic() >= next_round:
                v = await self.monitor.round()
                next_round = time.monotonic() + self.monitor.policy.clock.interval
                bound = None if v.bound is None else round(v.bound, 3)
                disagreeing = self.monitor.disagreeing_uplinks()
                if (v.state.value, bound, disagreeing) != last:
                    if last is None or last[0] != v.state.value:
                        log.info("clock-verdict", state=v.state.value, bound_s=v.bound, evidence=list(v.evidence))
                    last = (v.state.value, bound, disagreeing)
                    await self.inbox.put(ev.ClockChanged(v.state, v.bound, v.evidence, time.time(), disagreeing))
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that arrives as
            # the wait ends, and the service would not stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STEP_WATCH):
                    await self.sources_changed.wait()
                self.sources_changed.clear()

    async def reconfigure(self, policy: Policy) -> Reconfigured:
        self.monitor.policy = policy
        self.sources_changed.set()
        return Applied(f"{len(policy.clock.servers)} time servers")

    def status(self) -> dict[str, Any]:
        return {"state": self.monitor.verdict.state.value}

    def report(self) -> dict[str, Any]:
        """`failoverctl clock`: the verdict, each source, recent steps."""
        return self.monitor.report()

    def _has_sources(self) -> bool:
        ck = self.monitor.policy.clock
        return bool(ck.servers or ck.chrony or ck.gpsd)
