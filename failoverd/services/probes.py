"""The probe service: every probe of the policy, sent in rounds, its results handed to the engine."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from typing import Any, ClassVar

from failoverd.engine import events as ev
from failoverd.engine.drillstate import DrillPhase
from failoverd.observe.logging import get as get_logger
from failoverd.policy.model import CanarySpec, Policy, ProbeSpec
from failoverd.probes import schedule
from failoverd.probes.base import DatagramSession, ProbeOutcome, ProbeStats, Session
from failoverd.probes.kinds import open_session
from failoverd.probes.rounds import Rounds
from failoverd.services.base import Applied, EngineView, Inbox, Reconfigured

log = get_logger("failoverd")
ANSWERS_HELD = 0.2  # s: probe answers wait at most this long for the engine; losses never wait


class ProbeService:
    name: ClassVar[str] = "probes"

    def __init__(self, view: EngineView, inbox: Inbox) -> None:
        self.view = view
        self.inbox = inbox
        self.stats: dict[tuple[str, str], ProbeStats] = {}  # by (uplink, probe)
        self.results: list[ev.ProbeResult] = []  # answers held for the engine
        self.results_since: float | None = None
        self.generation = 0  # a reload starts every round loop anew with the new policy's probes
        self.new_generation = asyncio.Event()

    async def run(self) -> None:
        while True:
            gen = self.generation
            # One round loop per interval, not one per probe: the probes of a round go out in one
            # wakeup of the event loop and their answers are judged together (one engine step).
            async with asyncio.TaskGroup() as tg:
                for interval, probes in schedule.rounds(self.view.policy.uplinks).items():
                    tg.create_task(self._rounds(gen, interval, probes), name=f"probes-{interval:g}s")
                tg.create_task(self._wait_generation(gen), name="probe-generation")
                if any(d.canary is not None for d in self.view.policy.drills.values()):
                    tg.create_task(self._canary(gen), name="probe-canary")

    async def reconfigure(self, policy: Policy) -> Reconfigured:
        self.generation += 1
        self.new_generation.set()  # wakes every _wait_generation; each clears it for the next
        return Applied(f"{sum(len(u.probes) for u in policy.uplinks.values())} probes")

    def status(self) -> dict[str, Any]:
        return {"probes": len(self.stats), "completed": sum(s.done for s in self.stats.values())}

    async def _wait_generation(self, gen: int) -> None:
        while self.generation == gen:
            await self.new_generation.wait()
            await asyncio.sleep(0)  # let every waiter see it before it is cleared
            self.new_generation.clear()

    async def _rounds(self, gen: int, interval: float, probes: list[tuple[str, ProbeSpec]]) -> None:
        datagram: list[tuple[tuple[str, str], DatagramSession]] = []
        others: list[tuple[str, ProbeSpec, Session]] = []  # TCP, HTTP: a task per probe
        for uplink, spec in probes:
            try:
                session = open_session(spec, self.view.policy.uplinks[uplink])
            except OSError as exc:
                log.error("probe-unavailable", uplink=uplink, probe=spec.key, error=exc.strerror or str(exc))
                continue
            if isinstance(session, DatagramSession):
                datagram.append(((uplink, spec.key), session))
            else:
                others.append((uplink, spec, session))

        def on_tick() -> None:
            for uplink, spec, session in others:
                if schedule.probed(self.view.state, uplink):
                    attempts.create_task(self._attempt(session, uplink, spec), name=f"probe-{uplink}-{spec.kind}")

        try:
            async with asyncio.TaskGroup() as attempts:
                driver = attempts.create_task(
                    Rounds(
                        interval,
                        datagram,
                        deliver=self.probed,
                        sending=lambda key: schedule.probed(self.view.state, key[0]),
                        on_tick=on_tick,
                    ).run(),
                    name=f"rounds-{interval:g}s",
                )
                await self._wait_generation(gen)
                driver.cancel()
        finally:
            for _, session in datagram:
                session.close()
            for _, _, session in others:
                session.close()

    async def _canary(self, gen: int) -> None:
        """A running drill's canary (engine/drills.py): one probe per interval while the drill is
        CHECKING, sent with the canary's own mark so that it crosses the policy routing (its table is
        routed via the drilled uplink then) rather than the uplink's table, as the uplink's probes do.
        Its results are the drilled uplink's probe results under the canary's key."""
        while self.generation == gen:
            target = self._canary_due()
            if target is None:
                idle = min(d.canary.probe.interval for d in self.view.policy.drills.values() if d.canary is not None)
                await self._nap(gen, idle)
                continue
            uplink, canary = target
            # The uplink's spec with the canary's mark: a probe session takes its mark from it.
            marked = replace(self.view.policy.uplinks[uplink], fwmark=canary.fwmark)
            try:
                session = open_session(canary.probe, marked)
            except OSError as exc:
                log.error("probe-unavailable", uplink=uplink, probe=canary.key, error=exc.strerror or str(exc))
                await self._nap(gen, canary.probe.interval)
                continue
            try:
                interval = canary.probe.interval
                tick = schedule.first_tick(interval, time.monotonic())
                while self.generation == gen and self._canary_due() == target:
                    await self._nap(gen, max(0.0, tick - time.monotonic()))
                    if self.generation != gen or self._canary_due() != target:
                        break
                    self.probed([((uplink, canary.key), await session.probe())])
                    tick = max(tick + interval, schedule.first_tick(interval, time.monotonic()))
            finally:
                session.close()

    async def _nap(self, gen: int, seconds: float) -> None:
        """Sleep, but not past a reload: the round loops of the next policy wait for this task to end."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wait_generation(gen)

    def _canary_due(self) -> tuple[str, CanarySpec] | None:
        """The drilled uplink and its canary while a drill with one is CHECKING."""
        run = self.view.state.drill
        if run is None or run.phase is not DrillPhase.CHECKING:
            return None
        spec = self.view.policy.drills.get(run.uplink)
        if spec is None or spec.canary is None or run.uplink not in self.view.policy.uplinks:
            return None
        return run.uplink, spec.canary

    async def _attempt(self, session: Session, uplink: str, spec: ProbeSpec) -> None:
        self.probed([((uplink, spec.key), await session.probe())])

    def probed(self, results: list[tuple[tuple[str, str], ProbeOutcome]]) -> None:
        """Hand probe results to the engine: a loss at once, answers within ANSWERS_HELD.

        Bad news is urgent (a dead path is judged the moment its probe is due), good news is not: an
        uplink recovers only after seconds of answers, and a target that has failed already is not
        failed again by one more loss. Holding the rest for a few rounds spares the engine a step
        per round, healthy or failed over (with 50 ms probes, a step every 200 ms, not every 50).
        """
        now = time.monotonic()
        urgent = False
        for key, out in results:
            self._note(key, out)
            uplink, probe = key
            self.results.append(ev.ProbeResult(uplink, probe, out.ok, out.rtt, now))
            urgent = urgent or (not out.ok and not self._failed(uplink, probe))
        if not self.results:
            return
        if self.results_since is None:
            self.results_since = now
        if urgent or now - self.results_since >= ANSWERS_HELD:
            batch, self.results, self.results_since = self.results, [], None
            self.inbox.put_nowait(ev.ProbeBatch(tuple(batch)) if len(batch) > 1 else batch[0])  # unbounded

    def _failed(self, uplink: str, probe: str) -> bool:
        u = self.view.state.uplinks.get(uplink)
        t = u.targets.get(probe) if u is not None else None
        return t is not None and t.failed

    def _note(self, key: tuple[str, str], out: ProbeOutcome) -> None:
        stats = self.stats.get(key)
        if stats is None:
            stats = self.stats[key] = ProbeStats()
        stats.detail = out.detail
        stats.done += 1
        if not out.ok:
            stats.lost += 1
