"""The meter service: metered uplinks' interface byte counters, read into the history when their use changes."""

# Theory of operation
# -------------------
# A metered link (a satellite terminal, a data-capped SIM) is paid per byte, and the incident report
# says how many it carried. failoverd keeps no per-packet counters of its own; the kernel counts
# every byte an interface sends and receives. So the service reads those counters (netlink's
# IFLA_STATS64, in the daemon's own network namespace: sysfs would show the host's) into the
# history as `meter` records at the moments that bound a use of the link: at start, whenever a
# decision, an uplink change or a standby action names a metered uplink, and every READ_EVERY while
# they keep changing. The report sums the differences between consecutive readings in its period.
#
# The history is bounded (2000 records), so a reading is written only when the counters moved since
# the last one, and at most once per record that prompted it: a link carrying nothing costs nothing,
# and a busy one one record an hour. An interface that is removed and created again (a modem re-
# attached) starts its counters at zero: a reading below the last is a reset, not a negative use.

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from failoverd.observe.logging import get as get_logger
from failoverd.policy.model import Policy
from failoverd.services.base import Applied, EngineView, Reconfigured
from failoverd.services.history import History

log = get_logger("failoverd")
READ_EVERY = 3600.0  # s: a reading while a metered link's counters keep moving
FEED_KEPT = 256  # records waiting for the service: it reads them as fast as they come


Counters = Callable[[str], Awaitable[tuple[int, int] | None]]


async def counters(interface: str) -> tuple[int, int] | None:
    """The interface's (rx_bytes, tx_bytes), or None when it does not exist (a terminal switched off)."""
    try:
        async with AsyncIPRoute() as ipr:
            (msg,) = await ipr.link("get", ifname=interface)
            stats = msg.get_attr("IFLA_STATS64")
            return int(stats["rx_bytes"]), int(stats["tx_bytes"])
    except (NetlinkError, OSError, ValueError, TypeError):
        return None


def concerns(record: dict[str, Any], metered: set[str]) -> set[str]:
    """The metered uplinks a history record names (a class moved onto or off one, its state changed)."""
    kind = record.get("kind")
    if kind == "decision":
        return {u for u in (record.get("uplink"), record.get("from")) if u in metered}
    if kind in ("uplink", "standby", "drill"):
        return {record["uplink"]} & metered
    return set()


class MeterService:
    name: ClassVar[str] = "meter"

    def __init__(self, view: EngineView, history: History, read: Counters = counters) -> None:
        self.view = view
        self.history = history
        self.counters = read
        self.feed = history.subscribe(FEED_KEPT)
        self.last: dict[str, tuple[int, int]] = {}  # uplink -> the counters last written
        self.readings = 0

    def metered(self, policy: Policy) -> dict[str, str]:
        """Metered uplink -> its interface; a dual-stack uplink's twins share the device's counters, so
        they are read once, under the first twin's name (its file name)."""
        out: dict[str, str] = {}
        for n, u in policy.uplinks.items():
            if u.metered and u.interface not in out.values():
                out[n] = u.interface
        return out

    async def read(self, names: set[str] | None = None) -> None:
        """Write a reading of each metered uplink in `names` (all if None) whose counters moved."""
        policy = self.view.policy
        for name, interface in self.metered(policy).items():
            if names is not None and not names & {name, *policy.uplink_twins(name)}:
                continue
            got = await self.counters(interface)
            if got is None or got == self.last.get(name):
                continue
            self.last[name] = got
            self.readings += 1
            record = {"kind": "meter", "uplink": name, "interface": interface, "rx_bytes": got[0], "tx_bytes": got[1]}
            self.history.add(record, time.monotonic())

    async def run(self) -> None:
        await self.read()
        due = time.monotonic() + READ_EVERY
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - time.monotonic())):
                    await self.feed.ready.wait()
            self.feed.ready.clear()
            metered = set(self.metered(self.view.policy))
            wanted: set[str] = set()
            while self.feed.pending:
                record = self.feed.pending.popleft()
                if record.get("kind") != "meter":
                    wanted |= concerns(record, metered)
            if time.monotonic() >= due:
                due = time.monotonic() + READ_EVERY
                wanted = metered
            if wanted:
                await self.read(wanted)

    async def reconfigure(self, policy: Policy) -> Reconfigured:
        for name in set(self.last) - set(self.metered(policy)):
            del self.last[name]
        return Applied(f"{len(self.metered(policy))} metered uplinks")

    def status(self) -> dict[str, Any]:
        return {
            "readings": self.readings,
            "last": {n: {"rx_bytes": c[0], "tx_bytes": c[1]} for n, c in self.last.items()},
        }
