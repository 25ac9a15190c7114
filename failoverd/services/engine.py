"""The engine service: one task takes the inbox in order, steps the pure engine and carries out its effects.

It is the only writer of the engine's state and the only caller of the kernel writer (as Holo has
one southbound writer): every route, rule, nftables and conntrack change happens here, in the
order the engine decided it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, ClassVar

from failoverd.actions import run_command
from failoverd.control.api import OperatorCommand
from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.drills import canary_routes
from failoverd.engine.records import effect_record
from failoverd.engine.state import EngineState, restored_state
from failoverd.engine.step import step
from failoverd.errors import EngineBug
from failoverd.kernel import plan
from failoverd.kernel.writer import Applied as Programmed
from failoverd.kernel.writer import KernelWriter
from failoverd.observe.latency import Latency
from failoverd.observe.logging import get as get_logger
from failoverd.policy.model import Policy
from failoverd.services.base import Applied, Audit, Inbox, Item, NewPolicy, Reconfigured
from failoverd.services.history import History
from failoverd.statedir import (
    StateDir,
    boot_id,
    load_alarms,
    load_drills,
    load_overrides,
    load_proofs,
    save_alarms,
    save_drills,
    save_overrides,
    save_proofs,
)

log = get_logger("failoverd")
COMMAND_TIMEOUT = 10.0  # s: an operator waits this long at most for the engine's answer


class EngineService:
    name: ClassVar[str] = "engine"

    def __init__(
        self,
        policy: Policy,
        state: EngineState,
        *,
        inbox: Inbox,
        kernel: KernelWriter,
        history: History,
        state_dir: StateDir,
    ) -> None:
        self._policy = policy
        self._state = state
        self.inbox = inbox
        self.kernel = kernel
        self.history = history
        self.state_dir = state_dir
        self.last_step = time.monotonic()
        self.steps = 0
        self.step_time = Latency()  # of the pure step() alone
        self.effect_latency = Latency()  # from taking an event to the kernel holding the decision it led to
        self.replies: dict[str, asyncio.Future[fx.CommandReply]] = {}
        self.requests = 0
        self.ruleset = plan.ruleset(policy)  # built once per policy, not per failover
        self.reload_ruleset = False  # the next kernel write loads the ruleset even if unchanged (a reload)
        self.standby_locks: dict[str, asyncio.Lock] = {}
        # Who carries out SwitchProfile (the modem service, services/modem.py); None: only recorded.
        # It must not block: the switch runs in the background and answers with ProfileSwitched.
        self.profile_switch: Callable[[fx.SwitchProfile], None] | None = None

    @classmethod
    async def start(
        cls, policy: Policy, *, inbox: Inbox, kernel: KernelWriter, history: History, state_dir: StateDir
    ) -> EngineService:
        """Adopt what the kernel holds, restore overrides, program the kernel: moving nothing until evidence says so."""
        now = time.monotonic()
        routes, _ = await kernel.observe()
        adopted = plan.adopt(policy, routes)
        overrides, seq, note = load_overrides(state_dir)
        if note:
            log.warning("state", note=note)
        proofs, note = load_proofs(state_dir, now, time.time())
        if note:
            log.warning("state", note=note)
        drill, drills, note = load_drills(state_dir, now, time.time())
        if note:
            log.warning("state", note=note)
        if drill is not None:
            log.warning("drill-interrupted", uplink=drill.uplink, phase=drill.phase.value, by=drill.by)
        carried, note = load_alarms(state_dir, now, time.time())
        if note:
            log.warning("state", note=note)
        if adopted:
            log.info("adopted", classes={k: v[0] or v[1] for k, v in adopted.items()})
        self = cls(
            policy,
            restored_state(
                policy, now, adopted, overrides, seq, proofs=proofs, drill=drill, drills=drills, carried=carried
            ),
            inbox=inbox,
            kernel=kernel,
            history=history,
            state_dir=state_dir,
        )
        # The report's marker of a (re)start; its boot id tells whether the monotonic clock went on.
        start = {"kind": "start", "pid": os.getpid(), "policy": policy.source, "boot": boot_id()}
        history.add({**start, "adopted": {k: v[0] or v[1] for k, v in adopted.items()}}, now)
        diff = await self._program(full=True)
        if diff.removed:
            log.info("purged-stale", removed=diff.removed)
        return self

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def state(self) -> EngineState:
        return self._state

    # -- the service --------------------------------------------------------------------------------
    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:  # conntrack flushes, standby commands
            await self._loop(tasks)

    async def reconfigure(self, policy: Policy) -> Reconfigured:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.inbox.put(NewPolicy(policy, done))
        await asyncio.wait_for(done, COMMAND_TIMEOUT)
        return Applied()

    def status(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "kernel": self.kernel.status(),
            "queued": self.inbox.qsize(),
            "last_step_age_s": round(time.monotonic() - self.last_step, 3),
        }

    async def submit(self, command: OperatorCommand) -> fx.CommandReply:
        """An operator's command, in line with every other event; the engine's reply to it."""
        self.requests += 1
        command = replace(command, request=f"c{self.requests}")
        fut: asyncio.Future[fx.CommandReply] = asyncio.get_running_loop().create_future()
        self.replies[command.request] = fut
        await self.inbox.put(command)
        try:
            return await asyncio.wait_for(fut, COMMAND_TIMEOUT)
        finally:
            self.replies.pop(command.request, None)

    # -- the loop -----------------------------------------------------------------------------------
    async def _loop(self, tasks: asyncio.TaskGroup) -> None:
        await self._step(ev.Tick(), tasks)
        held: Item | None = None  # drained from behind a batch of probe results: next
        loop = asyncio.get_running_loop()  # its clock is time.monotonic, the engine's
        timer: asyncio.TimerHandle | None = None
        armed: float | None = None
        fired = False

        def due() -> None:
            nonlocal fired
            fired = True
            self.inbox.put_nowait(ev.Tick())

        while True:
            # The engine's own deadlines (hold-downs, preempt delays, expiring overrides) arrive as a
            # Tick from one timer, re-armed only when the deadline moves: a timeout around every wait
            # would cost a timer and a context manager per probe round.
            wake = self._state.wake_at
            if wake != armed or fired:
                if timer is not None:
                    timer.cancel()
                timer = None if wake is None else loop.call_at(wake, due)
                armed, fired = wake, False
            item: Item
            if held is not None:
                item, held = held, None
            elif not self.inbox.empty():
                item = self.inbox.get_nowait()
            else:
                item = await self.inbox.get()
            if isinstance(item, NewPolicy):
                await self._switch_policy(item, tasks)
                continue
            if isinstance(item, Audit):
                await self._audit()
                continue
            if isinstance(item, ev.ProbeResult | ev.ProbeBatch):
                # Results already waiting (another interval's round, a TCP probe) join this step.
                results = list(item.results) if isinstance(item, ev.ProbeBatch) else [item]
                while not self.inbox.empty():
                    nxt = self.inbox.get_nowait()
                    if isinstance(nxt, ev.ProbeResult):
                        results.append(nxt)
                    elif isinstance(nxt, ev.ProbeBatch):
                        results.extend(nxt.results)
                    else:
                        held = nxt
                        break
                item = ev.ProbeBatch(tuple(results)) if len(results) > 1 else results[0]
            await self._step(item, tasks)

    async def _step(self, event: ev.Event, tasks: asyncio.TaskGroup) -> None:
        now = time.monotonic()
        before = self._state
        try:
            self._state, effects = step(self._state, event, self._policy, now)
            self.step_time.observe(time.monotonic() - now)
        except EngineBug:
            # The daemon stops (fail-static: forwarding stays) and systemd restarts it; say what led here.
            log.critical("engine-bug", step=repr(event), uplinks={n: u.status for n, u in before.uplinks.items()})
            raise
        self.last_step = now
        self.steps += 1
        await self._execute(effects, now, before, tasks)

    async def _execute(
        self, effects: tuple[fx.Effect, ...], now: float, before: EngineState, tasks: asyncio.TaskGroup
    ) -> None:
        routes_changed = False
        for e in effects:
            record = effect_record(e)
            if record is not None:
                self.history.add(record, now)
            match e:
                case fx.SwitchClass():
                    routes_changed = True
                    log.warning(
                        "decision",
                        cls=e.cls,
                        frm=e.from_uplink,
                        to=e.to_uplink or e.route,
                        cause=e.cause.code,
                        text=e.cause.text,
                        evidence=dict(e.cause.evidence),
                    )
                case fx.WithdrawClass():
                    routes_changed = True
                case fx.RouteCanary():
                    routes_changed = True
                    log.info("canary", uplink=e.uplink, to=e.via or "unreachable", text=e.cause.text)
                case fx.UplinkChanged():
                    log.info("uplink", uplink=e.uplink, frm=e.old, to=e.new, cause=e.cause.code, text=e.cause.text)
                case fx.Alarm():
                    level = {"info": log.info, "warning": log.warning, "critical": log.critical}[e.severity]
                    level("alarm", subject=e.subject, cause=e.cause.code, text=e.cause.text)
                case fx.ClockReaction():
                    log.warning("clock", frm=e.old, to=e.new, distrust=sorted(e.distrust), text=e.cause.text)
                case fx.FlushConntrack():
                    self._spawn(tasks, self._flush(e), f"conntrack-{e.cls}")
                case fx.ActivateStandby() | fx.DeactivateStandby():
                    self._spawn(tasks, self._standby(e), f"standby-{e.uplink}")
                case fx.SwitchProfile():
                    log.warning("profile-switch", uplink=e.uplink, profile=e.profile, how=e.how, text=e.cause.text)
                    if self.profile_switch is not None:
                        self.profile_switch(e)
                case fx.CommandReply():
                    fut = self.replies.pop(e.request, None)
                    if fut is not None and not fut.done():
                        fut.set_result(e)
        if routes_changed:
            t0 = time.monotonic()
            diff = await self._program()
            done = time.monotonic()
            self.effect_latency.observe(done - now)
            log.info("kernel", changed=diff.changed, ms=round((done - t0) * 1000, 2))
        if before.overrides != self._state.overrides or before.override_seq != self._state.override_seq:
            save_overrides(self.state_dir, self._state.overrides, self._state.override_seq)
        if _proofs(before) != _proofs(self._state):
            save_proofs(self.state_dir, self._state.uplinks, now, time.time())
        # After the first step too: the drill the last run died in is over, and must not be again.
        if before.restart is not None or _drills(before) != _drills(self._state):
            save_drills(self.state_dir, self._state.drill, self._state.drills, now, time.time())
        if _alarms(before) != _alarms(self._state):
            save_alarms(self.state_dir, self._state.alarms, now, time.time())

    @staticmethod
    def _spawn(tasks: asyncio.TaskGroup, coro: Coroutine[Any, Any, None], name: str) -> None:
        tasks.create_task(coro, name=name)

    async def _flush(self, e: fx.FlushConntrack) -> None:
        c = self._policy.classes.get(e.cls)
        if c is None:
            return
        ok, text = await self.kernel.flush_conntrack(c.fwmark, plan.class_families(self._policy, e.cls))
        (log.info if ok else log.warning)("conntrack-flush", cls=e.cls, uplink=e.uplink, result=text)

    async def _standby(self, e: fx.ActivateStandby | fx.DeactivateStandby) -> None:
        activate = isinstance(e, fx.ActivateStandby)
        action = "activate" if activate else "deactivate"
        if e.command is None:
            ok, text = True, "no command configured"
        else:
            # One uplink's commands run one after the other, in the order the engine gave them (an
            # asyncio.Lock is first come, first served): an activation soon after a release (the one
            # at start, say) must not overtake it and be undone by it.
            async with self.standby_locks.setdefault(e.uplink, asyncio.Lock()):
                log.info("standby-run", uplink=e.uplink, action=action, argv=list(e.command.argv))
                ok, text = await run_command(e.command)
        await self.inbox.put(ev.StandbyResult(e.uplink, "activate" if activate else "deactivate", ok, text))

    async def _switch_policy(self, item: NewPolicy, tasks: asyncio.TaskGroup) -> None:
        self._policy = item.policy
        self.ruleset = plan.ruleset(item.policy)
        self.reload_ruleset = True  # as before: a reload also repairs a table deleted by hand
        await self._step(ev.PolicyReloaded(), tasks)
        await self._program(full=True)
        if not item.done.done():
            item.done.set_result(None)

    async def _audit(self) -> None:
        self.last_step = time.monotonic()  # the loop is alive (the watchdog asks), even with no events
        diff = await self._program(full=True)
        if diff.added or diff.removed:
            log.warning(
                "restored-owned-state",
                added=diff.added,
                removed=diff.removed,
                note="an owned route or rule was changed outside failoverd",
            )
            self.history.add({"kind": "restored", "added": diff.added, "removed": diff.removed}, time.monotonic())

    # -- the kernel ---------------------------------------------------------------------------------
    async def _program(self, *, full: bool = False) -> Programmed:
        """Routes, rules and classification for where the classes are now: the only kernel write."""
        assignments = {n: (c.uplink, c.route) for n, c in self._state.classes.items()}
        canary = canary_routes(self._policy, self._state.drill)
        want = plan.desired(self._policy, assignments, self.ruleset, canary)
        reload_ruleset, self.reload_ruleset = self.reload_ruleset, False  # once per reload, not twice
        return await self.kernel.apply(want, full=full, reload_ruleset=reload_ruleset)


def _proofs(state: EngineState) -> dict[str, tuple[float | None, float]]:
    return {n: (u.verified_at, u.tracked_since) for n, u in state.uplinks.items()}


def _alarms(state: EngineState) -> tuple[object, ...]:
    """What alarms.json holds: the active alarms and their acknowledgements (not escalations or repeats)."""
    return tuple((a.id, a.raised, a.acked_by) for a in state.alarms.values())


def _drills(state: EngineState) -> tuple[object, ...]:
    """What drills.json holds: the running drill's identity (not its counters, which move every probe
    round) and the timetables; compared each step, so the common case (no drill) is cheap."""
    run = state.drill
    key = None if run is None else (run.uplink, run.phase, run.started, run.by, run.activated, run.verified_before)
    return key, state.drills
