"""The clock checker's loop: ask the servers (each over its uplink), read chrony and the kernel, judge."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

from failoverd import BUILD_FLOOR
from failoverd.clock.consensus import Budget, Consensus, Sample, Step, Verdict, judge
from failoverd.clock.sntp import Reply, query
from failoverd.clock.sources import ChronyView, GpsFix, KernelClock, StepWatch, adjtimex, chrony_tracking, gpsd_time
from failoverd.policy.model import Policy, TimeServerSpec
from failoverd.probes.base import family_of, probe_device, zoned
from failoverd.statedir import StateDir

# The last confirmed-good wall time, minus this, is a floor the clock may not fall below after a restart.
FLOOR_SLACK = 3600.0
# A sane clock's wall time is saved at most this often: the floor is an hour below it anyway, and a
# gateway's flash should not be written every clock round.
GOOD_WALL_EVERY = 600.0
FLOOR_FILE = "clock.json"


@dataclass
class ClockMonitor:
    policy: Policy
    state: StateDir = field(default_factory=lambda: StateDir(None))
    verdict: Verdict = field(default_factory=Verdict)
    consensus: Consensus | None = None
    replies: dict[str, Reply] = field(default_factory=dict)
    chrony: ChronyView | None = None
    kernel: KernelClock | None = None
    watch: StepWatch | None = None
    pending_steps: list[Step] = field(default_factory=list)
    gps: GpsFix | None = None
    # Uplinks usable now (from the engine): a server whose own uplink is down is asked over another
    # one, rather than lost as evidence just when the gateway is failing over.
    usable: Callable[[], list[str]] = lambda: []
    via: dict[str, str | None] = field(default_factory=dict)
    good_wall: float | None = None  # the last wall time judged sane: from the state file, then from rounds
    saved_wall: float | None = None  # the one in the state file

    def __post_init__(self) -> None:
        doc = self.state.read(FLOOR_FILE).document
        with contextlib.suppress(ValueError, KeyError, TypeError):  # unreadable: the build's floor stands
            self.saved_wall = float(doc["good_wall"])
            self.good_wall = self.saved_wall

    def budget(self) -> Budget:
        ck = self.policy.clock
        floor = BUILD_FLOOR if self.good_wall is None else max(BUILD_FLOOR, self.good_wall - FLOOR_SLACK)
        return Budget(ck.max_error, ck.panic, ck.drift, ck.min_agreeing_classes, ck.hysteresis, floor)

    def _confirmed(self, wall: float) -> None:
        """The clock was judged sane at `wall`: raise the floor, and save it now and then."""
        self.good_wall = wall
        if self.state.path is None:
            return
        saved = self.saved_wall
        # Also when the clock is now earlier than the saved time: that one came from a wrong clock.
        if saved is None or wall - saved >= GOOD_WALL_EVERY or wall < saved:
            self.state.replace(FLOOR_FILE, {"good_wall": wall})
            self.saved_wall = wall

    def poll_steps(self) -> list[Step]:
        """Called every second: steps are noted at once and judged at the next round."""
        if self.watch is None:
            self.watch = StepWatch()
        steps = self.watch.poll(self.chrony)
        self.pending_steps += steps
        return steps

    def _ask(self, s: TimeServerSpec, usable: list[str]) -> Awaitable[Reply]:
        """One server's query, over its uplink or (that one down) the first usable one of the server's
        family: marked, and an IPv6 one bound to the uplink's device too, as the probes are. A
        link-local server is on its uplink's link, its zone: asked there or not at all."""
        ck = self.policy.clock
        address = ip_address(s.address)
        # A dual-stack uplink is two engine uplinks (policy/compile.py), and only the twin of the
        # server's family has a route to it in its table: an IPv6 server moved onto an IPv4 twin's
        # mark would find none there and leave by the main table.
        fit = [n for n in usable if self.policy.carries(n, address.version)]
        via = s.uplink if s.uplink in fit or not fit or address.is_link_local else fit[0]
        self.via[s.address] = via
        timeout = min(2.0, ck.interval / 2)
        up = self.policy.uplinks.get(via or "")
        if up is None:
            return query(s.address, s.port, timeout=timeout)
        device = probe_device(family_of(s.address), up.interface)
        return query(zoned(s.address, up.interface), s.port, timeout=timeout, mark=up.fwmark, device=device)

    async def round(self) -> Verdict:
        ck = self.policy.clock
        usable = self.usable()
        replies = await asyncio.gather(*(self._ask(s, usable) for s in ck.servers))
        self.chrony = await chrony_tracking() if ck.chrony else None
        self.gps = None
        if ck.gpsd:
            host, _, port = ck.gpsd.partition(":")
            self.gps = await gpsd_time(host, int(port or 2947), timeout=min(3.0, ck.interval))
        self.kernel = adjtimex()
        samples = []
        for s, r in zip(ck.servers, replies, strict=True):
            self.replies[s.address] = r
            if r.ok:
                samples.append(
                    Sample(s.address, s.operator or s.address, r.offset, r.half_width, r.mono, s.uplink, r.stratum)
                )
        if self.gps is not None:
            samples.append(Sample("gpsd", "gps", self.gps.offset, self.gps.error, self.gps.mono, None, 0))
        steps, self.pending_steps = self.pending_steps, []
        synced = bool((self.kernel and self.kernel.synced) or (self.chrony and self.chrony.synced))
        self.verdict, self.consensus = judge(
            self.verdict,
            now=time.monotonic(),
            wall=time.time(),
            samples=samples,
            steps=steps,
            b=self.budget(),
            kernel_synced=synced,
        )
        if self.verdict.state.value == "sane":
            self._confirmed(time.time())
        return self.verdict

    def disagreeing_uplinks(self) -> tuple[str, ...]:
        """Uplinks over which every source that answered is a falseticker (while a consensus exists)."""
        c = self.consensus
        if c is None or not c.ok:
            return ()
        false = {s for s, _ in c.falsetickers}
        per: dict[str, list[bool]] = {}
        for s in self.policy.clock.servers:
            r, via = self.replies.get(s.address), self.via.get(s.address)
            if r is not None and r.ok and via is not None:
                per.setdefault(via, []).append(s.address in false)
        return tuple(sorted(u for u, flags in per.items() if flags and all(flags)))

    def report(self) -> dict[str, Any]:
        v, c = self.verdict, self.consensus
        now = time.monotonic()
        drift = self.policy.clock.drift
        false = {s for s, _ in (c.falsetickers if c else ())}
        sources = []
        for s in self.policy.clock.servers:
            r = self.replies.get(s.address)
            row: dict[str, Any] = {
                "server": s.address,
                "class": s.operator or s.address,
                "uplink": self.via.get(s.address, s.uplink),
            }
            if r is None:
                row.update(state="not asked yet")
            elif not r.ok:
                row.update(state="no answer", error=r.error, age_s=round(now - r.mono, 1))
            else:
                lo, hi = Sample(s.address, "", r.offset, r.half_width, r.mono).interval(now, drift)
                row.update(
                    state="falseticker" if s.address in false else "agrees",
                    offset_s=r.offset,
                    interval_s=[lo, hi],
                    delay_s=r.delay,
                    stratum=r.stratum,
                    refid=r.refid,
                    age_s=round(now - r.mono, 1),
                )
            sources.append(row)
        if self.policy.clock.gpsd:
            g = self.gps
            row = {"server": f"gpsd {self.policy.clock.gpsd}", "class": "gps", "uplink": None}
            if g is None:
                row.update(state="no answer", error="no TPV with time")
            else:
                row.update(
                    state="falseticker" if "gpsd" in false else "agrees",
                    offset_s=g.offset,
                    delay_s=0.0,
                    age_s=round(now - g.mono, 1),
                )
            sources.append(row)
        return {
            "state": v.state.value,
            "since_s": round(now - v.since, 1) if v.since else None,
            "bound_s": v.bound,
            "evidence": list(v.evidence),
            "disagreeing_uplinks": list(self.disagreeing_uplinks()),
            "consensus": None
            if c is None
            else {
                "ok": c.ok,
                "offset_s": c.offset,
                "bound_s": c.bound,
                "classes": list(c.classes),
                "of": c.total_classes,
            },
            "sources": sources,
            "steps": [
                {"age_s": round(now - s.mono, 1), "delta_s": s.delta, "explained": s.explained, "why": s.why}
                for s in v.steps
            ],
            "chrony": None
            if self.chrony is None
            else {"synced": self.chrony.synced, "offset_s": self.chrony.offset, "stratum": self.chrony.stratum},
            "kernel": None
            if self.kernel is None
            else {"synced": self.kernel.synced, "maxerror_s": self.kernel.maxerror},
        }
