"""The daemon behind control's interface: reads from the services, commands through the engine's queue."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from failoverd.control.api import Feed, OperatorCommand
from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.state import EngineState
from failoverd.observe.status import class_rows, drill_rows, modem_rows, override_rows, uplink_rows
from failoverd.policy.model import Policy
from failoverd.services.clock import ClockService
from failoverd.services.engine import EngineService
from failoverd.services.history import History
from failoverd.services.meter import MeterService
from failoverd.services.probes import ProbeService
from failoverd.services.supervisor import Supervisor

RELOAD_TIMEOUT = 30.0  # s: a reload asks every service; none should take long


class LocalGateway:
    """Implements `failoverd.control.api.Gateway` for the socket and MQTT of this daemon."""

    def __init__(
        self,
        *,
        engine: EngineService,
        probes: ProbeService,
        clock: ClockService,
        history: History,
        supervisor: Supervisor,
        meter: MeterService | None = None,
    ) -> None:
        self.meter = meter
        self.engine = engine
        self.probes = probes
        self.clock = clock
        self._history = history
        self.supervisor = supervisor
        self.started = time.monotonic()

    @property
    def policy(self) -> Policy:
        return self.engine.policy

    @property
    def state(self) -> EngineState:
        return self.engine.state

    def status(self) -> dict[str, Any]:
        st, policy = self.engine.state, self.engine.policy
        return {
            "site": policy.site,
            "policy": policy.source,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "uplinks": uplink_rows(policy, st, self.probes.stats),
            "classes": class_rows(policy, st),
            "modems": modem_rows(policy, st),
            "overrides": override_rows(st, time.monotonic()),
            "drills": drill_rows(policy, st, time.monotonic()),
            "alarms": [a.as_dict(time.monotonic()) for a in st.alarms.values()],
            "clock": {"state": st.clock.state.value, "bound_s": st.clock.bound, "evidence": list(st.clock.evidence)},
            "services": self.supervisor.statuses(),
        }

    def history(self, last: int) -> list[dict[str, Any]]:
        return self._history.last(last)

    def clock_report(self) -> dict[str, Any]:
        return self.clock.report()

    async def submit(self, command: OperatorCommand) -> fx.CommandReply:
        return await self.engine.submit(command)

    async def reload(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.supervisor.ask(), RELOAD_TIMEOUT)

    async def read_meters(self) -> None:
        if self.meter is not None:
            await self.meter.read()

    def alarm(self, event: ev.ServiceAlarm) -> None:
        self.engine.inbox.put_nowait(event)

    def record(self, record: dict[str, Any]) -> None:
        self._history.add(record, time.monotonic())

    def subscribe(self, keep: int) -> Feed:
        return self._history.subscribe(keep)
