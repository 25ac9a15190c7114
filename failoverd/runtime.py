"""The imperative shell: one TaskGroup of named tasks feeding one event queue into the pure engine.

Only this module (and the kernel, probe and control modules it drives) awaits, reads clocks or
touches the kernel. Every effect the engine returns is carried out here, logged with its cause, and
written to the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from failoverd.actions import run_command
from failoverd.clock.monitor import ClockMonitor
from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.decide import usable
from failoverd.engine.state import EngineState, Lifecycle, restored_state
from failoverd.engine.step import step
from failoverd.errors import FailoverdError, PolicyError
from failoverd.kernel import conntrack, nft, plan
from failoverd.kernel.netlink import Diff, Kernel, LinkEvent, OwnedChanged
from failoverd.observe import systemd
from failoverd.observe.journal import Journal, effect_record
from failoverd.observe.logging import get as get_logger
from failoverd.policy import load_policy
from failoverd.policy.model import Policy, ProbeSpec
from failoverd.probes import Session, open_session
from failoverd.probes.base import DatagramSession, ProbeOutcome, ProbeStats
from failoverd.probes.rounds import Rounds
from failoverd.statefile import load_overrides, save_overrides

if TYPE_CHECKING:
    from failoverd.control.mqtt import Fleet

log = get_logger("failoverd")
AUDIT_INTERVAL = 30.0  # full kernel reconcile, in case a netlink event was missed


SHUTDOWN_GRACE = 6.0
ANSWERS_HELD = 0.2  # s: probe answers wait at most this long for the engine; losses never wait


def _log_stuck_tasks() -> None:
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=3)
        where = [f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in frames]
        log.warning("shutdown-waiting-for", task=task.get_name(), where=where)


def _exit_now() -> None:
    log.error("shutdown-forced", note="tasks did not stop in time; forwarding stays as it is (fail-static)")
    os._exit(0)


class Shutdown(Exception):
    """Raised inside the TaskGroup to stop every task (SIGTERM, SIGINT)."""


@dataclass(frozen=True, slots=True)
class NewPolicy:
    policy: Policy
    reply: asyncio.Future[dict[str, Any]] | None = None


@dataclass(slots=True)
class Options:
    policy_path: Path
    state_dir: Path | None = None
    socket_path: str | None = None
    restore_on_exit: bool = False


@dataclass(slots=True)
class Daemon:
    opts: Options
    policy: Policy
    state: EngineState = field(init=False)
    kernel: Kernel = field(init=False)
    queue: asyncio.Queue[ev.Event | NewPolicy] = field(default_factory=asyncio.Queue)
    journal: Journal = field(init=False)
    replies: dict[str, asyncio.Future[fx.CommandReply]] = field(default_factory=dict)
    generation: int = 0
    new_generation: asyncio.Event = field(default_factory=asyncio.Event)
    tg: asyncio.TaskGroup | None = None
    last_step: float = 0.0
    started: float = field(default_factory=time.monotonic)
    audit_wanted: asyncio.Event = field(default_factory=asyncio.Event)
    seq: int = 0
    carrier: dict[str, bool] = field(default_factory=dict)
    probe_stats: dict[tuple[str, str], ProbeStats] = field(default_factory=dict)  # by (uplink, probe)
    refused: set[str] = field(default_factory=set)
    results: list[ev.ProbeResult] = field(default_factory=list)  # answers held for the engine
    results_since: float | None = None
    clock: ClockMonitor | None = None
    fleet: Fleet | None = None  # the MQTT session, when the policy enables it

    # -- start-up -----------------------------------------------------------------------------------
    async def run(self) -> None:
        if self.opts.state_dir is not None:
            self.opts.state_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.opts.state_dir)
        async with Kernel(self.policy.ownership) as kernel:
            self.kernel = kernel
            await self._start()
            try:
                async with asyncio.TaskGroup() as tg:
                    self.tg = tg
                    tg.create_task(self._engine_loop(), name="engine")
                    tg.create_task(self._watch_kernel(), name="netlink-watch")
                    tg.create_task(self._audit_loop(), name="audit")
                    tg.create_task(self._probe_supervisor(), name="probes")
                    tg.create_task(self._signals(), name="signals")
                    tg.create_task(self._control(), name="control")
                    tg.create_task(self._clock_loop(), name="clock")
                    if self.policy.control.mqtt.enabled:
                        from failoverd.control.mqtt import Fleet  # noqa: PLC0415 (aiomqtt only when used)

                        self.fleet = Fleet(self, self.policy.control.mqtt, self.opts.state_dir)
                        tg.create_task(self.fleet.run(), name="mqtt")
                    if (interval := systemd.watchdog_interval()) is not None:
                        tg.create_task(self._watchdog(interval), name="watchdog")
                    systemd.notify("READY=1\nSTATUS=failoverd running")
                    log.info("started", policy=self.policy.source, site=self.policy.site, pid=os.getpid())
            except* Shutdown:
                pass
            systemd.notify("STOPPING=1")
            if self.opts.restore_on_exit:
                diff = await kernel.purge()
                with contextlib.suppress(nft.NftError):
                    await nft.remove()
                log.info("restored-on-exit", removed=len(diff.removed))
            else:
                log.info("stopped-fail-static", note="the last forwarding state stays in the kernel")

    async def _start(self) -> None:
        now = time.monotonic()
        routes, _ = await self.kernel.observe()
        adopted = plan.adopt(self.policy, routes)
        overrides: tuple[Any, ...] = ()
        seq = 0
        if self.opts.state_dir is not None:
            overrides, seq, note = load_overrides(self.opts.state_dir)
            if note:
                log.warning("state", note=note)
        self.state = restored_state(self.policy, now, adopted, overrides, seq)
        if adopted:
            log.info("adopted", classes={k: v[0] or v[1] for k, v in adopted.items()})
        await self._apply_classification()
        diff = await self._converge(full=True)
        if diff.removed:
            log.info("purged-stale", removed=diff.removed)
        for name, u in self.policy.uplinks.items():
            link = self.kernel.links.get(u.interface)
            up = link is not None and link.up and link.carrier
            self.carrier[name] = up
            self.queue.put_nowait(ev.CarrierChanged(name, up))
            if link is None:
                log.warning("missing-interface", uplink=name, interface=u.interface)

    async def _apply_classification(self) -> None:
        try:
            await nft.apply(self.policy)
        except nft.NftError as exc:
            # Rules and routes still steer marked traffic; only classification is missing.
            log.error("nft-failed", error=str(exc))

    async def _converge(self, full: bool = False) -> Diff:
        assignments = {n: (c.uplink, c.route) for n, c in self.state.classes.items()}
        routes = plan.desired_routes(self.policy, assignments)
        diff = await self.kernel.reconcile(routes, plan.desired_rules(self.policy), full=full)
        # A route via a link that is down (a cold standby that is off) is refused on every try: say
        # so when it starts and when it ends, not at every reconcile.
        failed = set(diff.failed)
        for failure in sorted(failed - self.refused):
            log.warning("kernel-refused", detail=failure, note="retried on link changes and every audit")
        for failure in sorted(self.refused - failed):
            log.info("kernel-accepted", detail=failure)
        self.refused = failed
        return diff

    # -- the engine ---------------------------------------------------------------------------------
    async def _engine_loop(self) -> None:
        await self._step(ev.Tick())
        held: ev.Event | NewPolicy | None = None  # drained from behind a batch of probe results: next
        loop = asyncio.get_running_loop()  # its clock is time.monotonic, the engine's
        timer: asyncio.TimerHandle | None = None
        armed: float | None = None
        fired = False

        def due() -> None:
            nonlocal fired
            fired = True
            self.queue.put_nowait(ev.Tick())

        while True:
            # The engine's own deadlines (hold-downs, preempt delays, expiring overrides) arrive as a
            # Tick from one timer, re-armed only when the deadline moves: a timeout around every wait
            # would cost a timer and a context manager per probe round.
            wake = self.state.wake_at
            if wake != armed or fired:
                if timer is not None:
                    timer.cancel()
                timer = None if wake is None else loop.call_at(wake, due)
                armed, fired = wake, False
            item: ev.Event | NewPolicy
            if held is not None:
                item, held = held, None
            elif not self.queue.empty():
                item = self.queue.get_nowait()
            else:
                item = await self.queue.get()
            if isinstance(item, NewPolicy):
                await self._switch_policy(item)
                continue
            if isinstance(item, ev.ProbeResult | ev.ProbeBatch):
                # Results already waiting (another interval's round, a TCP probe) join this step.
                results = list(item.results) if isinstance(item, ev.ProbeBatch) else [item]
                while not self.queue.empty():
                    nxt = self.queue.get_nowait()
                    if isinstance(nxt, ev.ProbeResult):
                        results.append(nxt)
                    elif isinstance(nxt, ev.ProbeBatch):
                        results.extend(nxt.results)
                    else:
                        held = nxt
                        break
                item = ev.ProbeBatch(tuple(results)) if len(results) > 1 else results[0]
            await self._step(item)

    async def _step(self, event: ev.Event) -> None:
        now = time.monotonic()
        before = self.state
        self.state, effects = step(self.state, event, self.policy, now)
        self.last_step = now
        await self._execute(effects, now, before)

    async def _execute(self, effects: tuple[fx.Effect, ...], now: float, before: EngineState) -> None:
        routes_changed = False
        for e in effects:
            record = effect_record(e)
            if record is not None:
                self._record(record, now)
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
                case fx.UplinkChanged():
                    log.info("uplink", uplink=e.uplink, frm=e.old, to=e.new, cause=e.cause.code, text=e.cause.text)
                case fx.Alarm():
                    level = {"info": log.info, "warning": log.warning, "critical": log.critical}[e.severity]
                    level("alarm", subject=e.subject, cause=e.cause.code, text=e.cause.text)
                case fx.ClockReaction():
                    log.warning("clock", frm=e.old, to=e.new, distrust=sorted(e.distrust), text=e.cause.text)
                case fx.FlushConntrack():
                    self._spawn(self._flush(e), f"conntrack-{e.cls}")
                case fx.ActivateStandby() | fx.DeactivateStandby():
                    self._spawn(self._standby(e), f"standby-{e.uplink}")
                case fx.CommandReply():
                    fut = self.replies.pop(e.request, None)
                    if fut is not None and not fut.done():
                        fut.set_result(e)
        if routes_changed:
            t0 = time.monotonic()
            diff = await self._converge()
            log.info("kernel", changed=diff.added + diff.removed, ms=round((time.monotonic() - t0) * 1000, 2))
        if self.opts.state_dir is not None and (
            before.overrides != self.state.overrides or before.override_seq != self.state.override_seq
        ):
            save_overrides(self.opts.state_dir, self.state.overrides, self.state.override_seq)

    def _record(self, record: dict[str, Any], now: float) -> None:
        record = self.journal.add(record, now)
        if self.fleet is not None:
            self.fleet.event(record)

    def remote_refused(self, reason: str, request: dict[str, Any]) -> None:
        """A remote command refused before it reached the command table: kept in the history."""
        cmd, key = request.get("cmd"), request.get("key")
        record = {"kind": "remote-refused", "reason": reason, "cmd": cmd if isinstance(cmd, str) else None}
        record["key"] = key if isinstance(key, str) else None
        self._record(record, time.monotonic())

    def _spawn(self, coro: Any, name: str) -> None:
        assert self.tg is not None
        self.tg.create_task(coro, name=name)

    async def _flush(self, e: fx.FlushConntrack) -> None:
        c = self.policy.classes.get(e.cls)
        if c is None:
            return
        ok, text = await conntrack.flush_mark(c.fwmark, self.policy.ownership.fwmark_mask)
        (log.info if ok else log.warning)("conntrack-flush", cls=e.cls, uplink=e.uplink, result=text)

    async def _standby(self, e: fx.ActivateStandby | fx.DeactivateStandby) -> None:
        action = "activate" if isinstance(e, fx.ActivateStandby) else "deactivate"
        if e.command is None:
            ok, text = True, "no command configured"
        else:
            log.info("standby-run", uplink=e.uplink, action=action, argv=list(e.command.argv))
            ok, text = await run_command(e.command)
        await self.queue.put(ev.StandbyResult(e.uplink, action, ok, text))  # type: ignore[arg-type]

    async def _switch_policy(self, item: NewPolicy) -> None:
        old = self.policy
        self.policy = item.policy
        self.generation += 1
        self.new_generation.set()  # wakes every _wait_generation; each clears it for the next
        await self._apply_classification()
        await self._step(ev.PolicyReloaded())
        await self._converge(full=True)
        for name, u in self.policy.uplinks.items():
            if name not in old.uplinks:
                link = self.kernel.links.get(u.interface)
                await self.queue.put(ev.CarrierChanged(name, bool(link and link.up and link.carrier)))
        log.warning("policy-reloaded", policy=self.policy.source)
        if self.policy.control.mqtt != old.control.mqtt:
            log.warning("mqtt-unchanged", note="MQTT settings (and command keys) take effect on restart")
        self._record({"kind": "reload", "ok": True, "policy": self.policy.source}, time.monotonic())
        if item.reply is not None and not item.reply.done():
            item.reply.set_result({"ok": True, "text": f"policy {self.policy.source} in force"})

    # -- commands (from the control socket) ---------------------------------------------------------
    async def command(self, event: ev.ForceClass | ev.DrainUplink | ev.Release) -> fx.CommandReply:
        fut: asyncio.Future[fx.CommandReply] = asyncio.get_running_loop().create_future()
        self.replies[event.request] = fut
        await self.queue.put(event)
        return await asyncio.wait_for(fut, 10)

    def next_request(self) -> str:
        self.seq += 1
        return f"c{self.seq}"

    async def reload(self) -> dict[str, Any]:
        """Validate the policy file again; on any error keep running the old policy and say why."""
        try:
            new = load_policy(self.opts.policy_path)
        except PolicyError as exc:
            problems = [str(p) for p in exc.problems]
            for p in problems:
                log.error("reload-refused", problem=p)
            self._record({"kind": "reload", "ok": False, "problems": problems}, time.monotonic())
            return {"ok": False, "text": "policy refused; the running policy stays in force", "problems": problems}
        if new.ownership != self.policy.ownership:
            text = "ownership (route protocol, priorities, tables, marks) changed: restart failoverd to apply it"
            log.error("reload-refused", problem=text)
            return {"ok": False, "text": text, "problems": [text]}
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        await self.queue.put(NewPolicy(new, fut))
        return await asyncio.wait_for(fut, 10)

    # -- probes -------------------------------------------------------------------------------------
    async def _probe_supervisor(self) -> None:
        while True:
            gen = self.generation
            # One round loop per interval, not one per probe: the probes of a round go out in one
            # wakeup of the event loop and their answers are judged together (one engine step).
            rounds: dict[float, list[tuple[str, ProbeSpec]]] = {}
            for name, u in self.policy.uplinks.items():
                for spec in u.probes:
                    rounds.setdefault(spec.interval, []).append((name, spec))
            async with asyncio.TaskGroup() as ptg:
                for interval, probes in rounds.items():
                    ptg.create_task(self._probe_rounds(gen, interval, probes), name=f"probes-{interval:g}s")
                ptg.create_task(self._wait_generation(gen), name="probe-generation")

    async def _wait_generation(self, gen: int) -> None:
        while self.generation == gen:
            await self.new_generation.wait()
            await asyncio.sleep(0)  # let every waiter see it before it is cleared
            self.new_generation.clear()

    def _probing(self, uplink: str) -> bool:
        u = self.state.uplinks.get(uplink)
        return u is not None and u.lifecycle not in (Lifecycle.STANDBY, Lifecycle.FAILED)

    async def _probe_rounds(self, gen: int, interval: float, probes: list[tuple[str, ProbeSpec]]) -> None:
        datagram: list[tuple[tuple[str, str], DatagramSession]] = []
        others: list[tuple[str, ProbeSpec, Session]] = []  # TCP, HTTP: a task per probe
        for uplink, spec in probes:
            try:
                session = open_session(spec, self.policy.uplinks[uplink])
            except OSError as exc:
                log.error("probe-unavailable", uplink=uplink, probe=spec.key, error=exc.strerror or str(exc))
                continue
            if isinstance(session, DatagramSession):
                datagram.append(((uplink, spec.key), session))
            else:
                others.append((uplink, spec, session))

        def on_tick() -> None:
            for uplink, spec, session in others:
                if self._probing(uplink):
                    attempts.create_task(self._attempt(session, uplink, spec))

        try:
            async with asyncio.TaskGroup() as attempts:
                rounds = attempts.create_task(
                    Rounds(
                        interval,
                        datagram,
                        deliver=self._probed,
                        sending=lambda key: self._probing(key[0]),
                        on_tick=on_tick,
                    ).run()
                )
                await self._wait_generation(gen)
                rounds.cancel()
        finally:
            for _, session in datagram:
                session.close()
            for _, _, session in others:
                session.close()

    async def _attempt(self, session: Session, uplink: str, spec: ProbeSpec) -> None:
        self._probed([((uplink, spec.key), await session.probe())])

    def _probed(self, results: list[tuple[tuple[str, str], ProbeOutcome]]) -> None:
        """Hand probe results to the engine: a loss at once, answers within ANSWERS_HELD.

        Bad news is urgent (a dead path is judged the moment its probe is due), good news is not: an
        uplink recovers only after seconds of answers, and a target that has failed already is not
        failed again by one more loss. Holding the rest for a few rounds spares the engine a step
        per round, healthy or failed over (at 50 ms probes, 20 steps a second become 5).
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
            self.queue.put_nowait(ev.ProbeBatch(tuple(batch)) if len(batch) > 1 else batch[0])  # unbounded

    def _failed(self, uplink: str, probe: str) -> bool:
        u = self.state.uplinks.get(uplink)
        t = u.targets.get(probe) if u is not None else None
        return t is not None and t.failed

    def _note(self, key: tuple[str, str], out: ProbeOutcome) -> None:
        stats = self.probe_stats.get(key)
        if stats is None:
            stats = self.probe_stats[key] = ProbeStats()
        stats.detail = out.detail
        stats.done += 1

    # -- kernel events ------------------------------------------------------------------------------
    async def _watch_kernel(self) -> None:
        by_iface = {u.interface: name for name, u in self.policy.uplinks.items()}
        async for e in self.kernel.watch():
            if isinstance(e, LinkEvent):
                by_iface = {u.interface: name for name, u in self.policy.uplinks.items()}
                name = by_iface.get(e.link.name)
                if name is None:
                    continue
                up = e.link.up and e.link.carrier and not e.gone
                if self.carrier.get(name) != up:
                    self.carrier[name] = up
                    log.info("carrier", uplink=name, interface=e.link.name, up=up)
                    await self.queue.put(ev.CarrierChanged(name, up))
                    if up:
                        self.audit_wanted.set()  # the kernel drops routes of a device that went down
            elif isinstance(e, OwnedChanged):
                # Ours or someone else's change: a full reconcile tells which, and undoes the latter.
                self.audit_wanted.set()

    async def _audit_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.audit_wanted.wait(), AUDIT_INTERVAL)
            await asyncio.sleep(0.05)  # let a burst of events settle
            self.audit_wanted.clear()
            diff = await self._converge(full=True)
            if diff.added or diff.removed:
                log.warning(
                    "restored-owned-state",
                    added=diff.added,
                    removed=diff.removed,
                    note="an owned route or rule was changed outside failoverd",
                )
                self._record({"kind": "restored", "added": diff.added, "removed": diff.removed}, time.monotonic())

    # -- clock sanity -------------------------------------------------------------------------------
    async def _clock_loop(self) -> None:
        """Judge the clock every interval and at once after a step; tell the engine when the verdict moves.

        Nothing here feeds a timer: the engine runs on the monotonic clock whatever the verdict says."""
        self.clock = ClockMonitor(self.policy, self.opts.state_dir)
        self.clock.usable = lambda: [n for n in self.policy.uplinks if usable(self.state, n)]
        if not self.policy.clock.servers and not self.policy.clock.chrony:
            return
        last: tuple[str, float | None, tuple[str, ...]] | None = None
        next_round = time.monotonic()
        while True:
            self.clock.policy = self.policy
            steps = self.clock.poll_steps()
            for st in steps:
                log.warning("clock-step", delta_s=round(st.delta, 6), explained=st.explained, why=st.why)
                self._record(
                    {"kind": "clock-step", "delta_s": st.delta, "explained": st.explained, "why": st.why},
                    time.monotonic(),
                )
            if steps or time.monotonic() >= next_round:
                v = await self.clock.round()
                next_round = time.monotonic() + self.policy.clock.interval
                bound = None if v.bound is None else round(v.bound, 3)
                disagreeing = self.clock.disagreeing_uplinks()
                if (v.state.value, bound, disagreeing) != last:
                    if last is None or last[0] != v.state.value:
                        log.info("clock-verdict", state=v.state.value, bound_s=v.bound, evidence=list(v.evidence))
                    last = (v.state.value, bound, disagreeing)
                    await self.queue.put(ev.ClockChanged(v.state, v.bound, v.evidence, time.time(), disagreeing))
            await asyncio.sleep(1.0)

    # -- signals, control, watchdog -----------------------------------------------------------------
    async def _signals(self) -> None:
        loop = asyncio.get_running_loop()
        received: asyncio.Queue[signal.Signals] = asyncio.Queue()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, received.put_nowait, sig)
        while True:
            sig = await received.get()
            log.info("signal", signal=sig.name)
            if sig is not signal.SIGHUP:
                # Stopping must never hang (systemd would wait, an operator would reach for kill -9).
                # If the tasks have not wound down in time, say which ones, then leave fail-static.
                loop.call_later(SHUTDOWN_GRACE / 2, _log_stuck_tasks)
                loop.call_later(SHUTDOWN_GRACE, _exit_now)
                raise Shutdown
            await self.reload()

    async def _control(self) -> None:
        from failoverd.control.unix import serve  # noqa: PLC0415 (keeps the import graph acyclic)

        await serve(self, self.opts.socket_path or self.policy.control.socket)

    async def _watchdog(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            # Pet the watchdog only while the engine loop is alive: it wakes at least every audit.
            if time.monotonic() - self.last_step < max(AUDIT_INTERVAL * 2, interval * 4):
                systemd.notify("WATCHDOG=1")


def run(opts: Options) -> int:
    try:
        policy = load_policy(opts.policy_path)
    except PolicyError as exc:
        for p in exc.problems:
            log.error("policy", problem=str(p))
        return 2
    daemon = Daemon(opts, policy)
    try:
        asyncio.run(daemon.run())
    except FailoverdError as exc:
        log.error("fatal", error=str(exc))
        return 1
    return 0
