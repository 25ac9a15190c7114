"""A gateway of the real engine alone behind control's interface: no probes, kernel or sockets (tests, fleet bench)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from failoverd.control.api import Feed, Gateway, OperatorCommand
from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.state import EngineState, initial_state
from failoverd.engine.step import step
from failoverd.policy.load import parse_policy_text
from failoverd.policy.model import Policy


class EngineGateway:
    """Steps the real engine for each command; keeps the records it is given."""

    def __init__(self, text: str = "", *, policy: Policy | None = None, state: EngineState | None = None) -> None:
        """From a policy's text; or, for many at once (the fleet bench), a policy and a state already made."""
        if (policy is None) == (not text):
            raise ValueError("give the policy's text or a policy, not both")
        self._policy = policy if policy is not None else parse_policy_text(text, "t.yaml")
        self._state = state if state is not None else initial_state(self._policy, 0.0)
        self.records: list[dict[str, Any]] = []
        self.feeds: list[Feed] = []
        self.reloads = 0
        self.requests = 0
        self.alarms: list[fx.Alarm] = []  # what the engine made of the shell's alarms

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def state(self) -> EngineState:
        return self._state

    def status(self) -> dict[str, Any]:
        return {"site": self._policy.site, "classes": {n: c.uplink for n, c in self._state.classes.items()}}

    def history(self, last: int) -> list[dict[str, Any]]:
        return self.records[-last:]

    def clock_report(self) -> dict[str, Any]:
        return {"state": self._state.clock.state.value, "sources": [], "steps": [], "evidence": []}

    async def submit(self, command: OperatorCommand) -> fx.CommandReply:
        self.requests += 1
        command = replace(command, request=f"c{self.requests}")
        self._state, effects = step(self._state, command, self._policy, time.monotonic())
        return next(e for e in effects if isinstance(e, fx.CommandReply))

    async def reload(self) -> dict[str, Any]:
        self.reloads += 1
        return {"ok": True, "text": "reloaded"}

    def record(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        for feed in self.feeds:
            feed.put(record)

    async def read_meters(self) -> None:
        pass  # no interfaces here

    def feed(self, event: ev.Event) -> None:
        """Step the engine with an event the shell would give it (a carrier change, probe results)."""
        self._state, _ = step(self._state, event, self._policy, time.monotonic())

    def alarm(self, event: ev.ServiceAlarm) -> None:
        self._state, effects = step(self._state, event, self._policy, time.monotonic())
        self.alarms.extend(e for e in effects if isinstance(e, fx.Alarm))

    def subscribe(self, keep: int) -> Feed:
        feed = Feed(keep)
        self.feeds.append(feed)
        return feed


def _conforms(g: EngineGateway) -> Gateway:
    return g  # mypy checks that it implements the interface
