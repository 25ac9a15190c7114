"""The link service: carrier from netlink to the engine, and a full audit of owned state when it may be due."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar

from failoverd.engine import events as ev
from failoverd.kernel.writer import KernelWriter, LinkEvent, OwnedChanged
from failoverd.observe.logging import get as get_logger
from failoverd.policy.model import Policy
from failoverd.services.base import Applied, Audit, EngineView, Inbox, Reconfigured

log = get_logger("failoverd")
AUDIT_INTERVAL = 30.0  # s: a full kernel reconcile, in case a netlink event was missed
SETTLE = 0.05  # s: a burst of netlink events is one audit


class LinkService:
    name: ClassVar[str] = "netlink"

    def __init__(self, kernel: KernelWriter, view: EngineView, inbox: Inbox) -> None:
        self.kernel = kernel
        self.view = view
        self.inbox = inbox
        self.carrier: dict[str, bool] = {}  # what the engine was last told, by uplink
        self.missing: set[str] = set()  # uplinks whose interface does not exist (said once)
        self.audit_wanted = asyncio.Event()

    async def run(self) -> None:
        self._announce(self.view.policy)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch(), name="netlink-watch")
            tg.create_task(self._audits(), name="audit")

    async def reconfigure(self, policy: Policy) -> Reconfigured:
        # An uplink the new policy drops is forgotten: if a later one brings it back, the engine
        # hears its carrier again (the engine starts a new uplink as if its carrier were up).
        for name in set(self.carrier) - set(policy.uplinks):
            del self.carrier[name]
        self._announce(policy)  # a new uplink's carrier, or one whose interface changed
        return Applied()

    def status(self) -> dict[str, Any]:
        return {"carrier": dict(self.carrier)}

    def _announce(self, policy: Policy) -> None:
        changes: list[ev.CarrierChanged] = []
        for name, u in policy.uplinks.items():
            link = self.kernel.links.get(u.interface)
            up = link is not None and link.up and link.carrier
            if self.carrier.get(name) != up:
                self.carrier[name] = up
                changes.append(ev.CarrierChanged(name, up))
            if link is None and name not in self.missing:
                log.warning("missing-interface", uplink=name, interface=u.interface)
            self.missing = (self.missing | {name}) if link is None else (self.missing - {name})
        if changes:
            self.inbox.put_nowait(_one_event(changes))

    async def _watch(self) -> None:
        async for e in self.kernel.watch():
            if isinstance(e, LinkEvent):
                # Both twins of a dual-stack uplink (policy/compile.py) ride one device: one carrier.
                names = [n for n, u in self.view.policy.uplinks.items() if u.interface == e.link.name]
                up = e.link.up and e.link.carrier and not e.gone
                changes = [ev.CarrierChanged(name, up) for name in names if self.carrier.get(name) != up]
                for change in changes:
                    self.carrier[change.uplink] = up
                    log.info("carrier", uplink=change.uplink, interface=e.link.name, up=up)
                if changes:
                    # One event, so one engine step and one kernel write, for both families: as two,
                    # the IPv6 route waited for the IPv4 step's kernel write and state files.
                    await self.inbox.put(_one_event(changes))
                    if up:
                        self.audit_wanted.set()  # the kernel drops routes of a device that went down
            elif isinstance(e, OwnedChanged):
                # Ours or someone else's change: a full reconcile tells which, and undoes the latter.
                self.audit_wanted.set()

    async def _audits(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: see services/clock.py
                async with asyncio.timeout(AUDIT_INTERVAL):
                    await self.audit_wanted.wait()
            await asyncio.sleep(SETTLE)
            self.audit_wanted.clear()
            await self.inbox.put(Audit())


def _one_event(changes: list[ev.CarrierChanged]) -> ev.CarrierChanged | ev.CarrierBatch:
    """Carrier changes known at one instant, for one engine step (a lone change as itself)."""
    return changes[0] if len(changes) == 1 else ev.CarrierBatch(tuple(changes))
