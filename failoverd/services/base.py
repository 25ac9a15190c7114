"""The shape every service of the daemon has, and the queue that feeds the engine."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from failoverd.engine import events as ev
from failoverd.engine.state import EngineState
from failoverd.policy.model import Policy


@dataclass(frozen=True, slots=True)
class Applied:
    """The service took the new policy without a restart."""

    detail: str = ""


@dataclass(frozen=True, slots=True)
class NeedsRestart:
    """The service keeps running on what it had; the part that changed takes effect on restart."""

    why: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The service could not take part of the new policy (a file it names does not load): it goes on
    without that part, and the reload reports the service as failed."""

    why: str


Reconfigured = Applied | NeedsRestart | Failed


class Service(Protocol):
    """A long-running part of the daemon (as BIRD's protocols share one set of hooks).

    `run()` is its task in the daemon's TaskGroup, until cancelled; `reconfigure()` is asked by a reload,
    in the composition's order, once the engine holds the new policy; `status()` is what it tells
    an operator about itself."""

    name: ClassVar[str]

    async def run(self) -> None: ...

    async def reconfigure(self, policy: Policy) -> Reconfigured: ...

    def status(self) -> dict[str, Any]: ...


class EngineView(Protocol):
    """What the other services read of the engine: the policy in force and the engine's frozen state."""

    @property
    def policy(self) -> Policy: ...

    @property
    def state(self) -> EngineState: ...


@dataclass(frozen=True, slots=True)
class NewPolicy:
    """A reload: the engine switches to `policy` between two steps and then resolves `done`."""

    policy: Policy
    done: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class Audit:
    """A full reconcile of the kernel state failoverd owns is due (netlink saw a change, or a timer)."""


Item = ev.Event | NewPolicy | Audit
Inbox = asyncio.Queue[Item]  # unbounded: producers (probes, netlink, control) must never block
