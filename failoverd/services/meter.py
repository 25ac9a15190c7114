"""The meter service: metered uplinks' interface byte counters, read into the history when their use changes."""

# Theory of operation
# -------------------
# A metered link (a satellite terminal, a data-capped SIM) is paid per byte, and the incident report
# says how many it carried. failoverd keeps no per-packet counters of its own; the kernel counts
# every byte an interface sends and receives. So the service reads those counters (sysfs) into the
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
from pathlib import Path
from typing import Any, ClassVar

from failoverd.observe.logging import get as get_logger
from failoverd.policy.model import Policy
from failoverd.services.base import Applied, EngineView, Reconfigured
from failoverd.services.history import History

log = get_logger("failoverd")
READ_EVERY = 3600.0  # s: a reading while a metered link's counters keep moving
SYSFS = Path("/sys/class/net")
FEED_KEPT = 256  # records waiting for the service: it reads them as fast as they come


def counters(interface: str, root: Path = SYSFS) -> tuple[int, int] | None:
    """The interface's (rx_bytes, tx_bytes), or None when it does not exist (a terminal switched off)."""
    try:
        stats = root / interface / "statistics"
        return int((stats / "rx_bytes").read_text()), int((stats / "tx_bytes").read_text())
    except (OSError, ValueError):
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

    def __init__(self, view: EngineView, history: History, root: Path = SYSFS) -> None:
        self.view = view
        self.history = history
        self.root = root
        self.feed = history.subscribe(FEED_KEPT)
        self.last: dict[str, tuple[int, int]] = {}  # uplink -> the counters last written
        self.readings = 0

    def metered(self, policy: Policy) -> dict[str, str]:
        return {n: u.interface for n, u in policy.uplinks.items() if u.metered}

    def read(self, names: set[str] | None = None) -> None:
        """Write a reading of each metered uplink in `names` (all if None) whose counters moved."""
        for name, interface in self.metered(self.view.policy).items():
            if names is not None and name not in names:
                continue
            got = counters(interface, self.root)
            if got is None or got == self.last.get(name):
                continue
            self.last[name] = got
            self.readings += 1
            record = {"kind": "meter", "uplink": name, "interface": interface, "rx_bytes": got[0], "tx_bytes": got[1]}
            self.history.add(record, time.monotonic())

    async def run(self) -> None:
        self.read()
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
                self.read(wanted)

    async def reconfigure(self, policy: Policy) -> Reconfigured:
        for name in set(self.last) - set(self.metered(policy)):
            del self.last[name]
        return Applied(f"{len(self.metered(policy))} metered uplinks")

    def status(self) -> dict[str, Any]:
        return {
            "readings": self.readings,
            "last": {n: {"rx_bytes": c[0], "tx_bytes": c[1]} for n, c in self.last.items()},
        }
