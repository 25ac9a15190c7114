"""The composition: the daemon's services, built complete, run as named tasks of one TaskGroup."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from failoverd.control.unix import ControlSocket
from failoverd.engine import events as ev
from failoverd.errors import FailoverdError, PolicyError
from failoverd.kernel.writer import KernelWriter
from failoverd.observe import systemd
from failoverd.observe.journal import Journal
from failoverd.observe.logging import get as get_logger
from failoverd.policy import load_policy
from failoverd.policy.model import Policy
from failoverd.services.base import Inbox, Service
from failoverd.services.clock import ClockService
from failoverd.services.drills import DrillService
from failoverd.services.engine import EngineService
from failoverd.services.gateway import LocalGateway
from failoverd.services.history import History
from failoverd.services.links import AUDIT_INTERVAL, LinkService
from failoverd.services.meter import MeterService
from failoverd.services.metrics import MetricsService
from failoverd.services.modem import ModemService
from failoverd.services.notify import NotifierService
from failoverd.services.probes import ProbeService
from failoverd.services.supervisor import Supervisor
from failoverd.statedir import StateDir, boot_id

log = get_logger("failoverd")
SHUTDOWN_GRACE = 6.0  # s: then the daemon leaves, fail-static, whatever task is still winding down


@dataclass(frozen=True, slots=True)
class Options:
    policy_path: Path
    state_dir: Path | None = None
    socket_path: str | None = None
    restore_on_exit: bool = False


class Shutdown(Exception):
    """Raised inside the TaskGroup to stop every task (SIGTERM, SIGINT)."""


RUNNING = "running.json"  # in the state dir while the daemon runs; a clean stop removes it


def _last_run(state: StateDir) -> ev.ServiceAlarm | None:
    """A notice when the previous run did not stop cleanly (killed, crashed, or ended by the watchdog)."""
    prev = state.read(RUNNING).document
    if not isinstance(prev, dict):
        return None
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(prev.get("started", 0))))
    reboot = " and the machine restarted since" if prev.get("boot") != boot_id() else ""
    text = (
        f"the previous run (pid {prev.get('pid')}, started {when}) ended without a clean stop{reboot}: "
        "killed, crashed, or stopped by the systemd watchdog; forwarding was left as it was (fail-static)"
    )
    return ev.ServiceAlarm("unclean-exit", "daemon", "notice", "warning", text)


async def serve(opts: Options, policy: Policy) -> None:
    state = StateDir.create(opts.state_dir)
    inbox: Inbox = asyncio.Queue()
    if (notice := _last_run(state)) is not None:
        inbox.put_nowait(notice)  # the engine's first step says so, in the history and to the notifiers
    state.replace(RUNNING, {"pid": os.getpid(), "started": time.time(), "boot": boot_id()})
    history = History(Journal(state))
    async with KernelWriter(policy.ownership) as kernel:
        engine = await EngineService.start(policy, inbox=inbox, kernel=kernel, history=history, state_dir=state)
        probes = ProbeService(engine, inbox)
        clock = ClockService(engine, inbox, history, state)
        supervisor = Supervisor(opts.policy_path, engine, history, alarm=inbox.put_nowait)
        meter = MeterService(engine, history)
        modem = ModemService(engine, inbox)  # idle until the policy has a cellular uplink with profiles
        engine.profile_switch = modem.switch
        gateway = LocalGateway(
            engine=engine, probes=probes, clock=clock, history=history, supervisor=supervisor, meter=meter
        )
        # In this order a reload asks them: the engine first, as the others read the policy it holds.
        services: list[Service] = [
            engine,
            LinkService(kernel, engine, inbox),
            probes,
            clock,
            DrillService(engine, inbox),
            modem,
            meter,
            NotifierService(engine, history),
            ControlSocket(gateway, opts.socket_path),
            MetricsService(engine, probes, history),  # idle until the policy gives control.metrics
        ]
        if policy.control.mqtt.enabled:
            from failoverd.control.mqtt import Fleet  # noqa: PLC0415 (aiomqtt only when it is used)

            services.append(Fleet(gateway, policy.control.mqtt, state))
        try:
            async with asyncio.TaskGroup() as tg:
                for service in services:
                    tg.create_task(service.run(), name=service.name)
                tg.create_task(supervisor.run(services), name="supervisor")
                tg.create_task(_signals(supervisor), name="signals")
                if (interval := systemd.watchdog_interval()) is not None:
                    tg.create_task(_watchdog(engine, interval), name="watchdog")
                systemd.notify("READY=1\nSTATUS=failoverd running")
                log.info("started", policy=policy.source, site=policy.site, pid=os.getpid())
        except* Shutdown:
            pass
        systemd.notify("STOPPING=1")
        state.remove(RUNNING)
        if opts.restore_on_exit:
            diff = await kernel.purge()
            log.info("restored-on-exit", removed=len(diff.removed), nftables=diff.ruleset)
        else:
            log.info("stopped-fail-static", note="the last forwarding state stays in the kernel")


async def _signals(supervisor: Supervisor) -> None:
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[signal.Signals] = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, received.put_nowait, sig)
    while True:
        sig = await received.get()
        log.info("signal", signal=sig.name)
        if sig is signal.SIGHUP:
            supervisor.ask()  # not awaited: a SIGTERM must still be heard while a reload runs
            continue
        # Stopping must never hang (systemd would wait, an operator would reach for kill -9).
        # If the tasks have not wound down in time, say which ones, then leave fail-static.
        loop.call_later(SHUTDOWN_GRACE / 2, _log_stuck_tasks)
        loop.call_later(SHUTDOWN_GRACE, _exit_now)
        raise Shutdown


async def _watchdog(engine: EngineService, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        # Pet the watchdog only while the engine loop is alive: it steps at least every audit.
        if time.monotonic() - engine.last_step < max(AUDIT_INTERVAL * 2, interval * 4):
            systemd.notify("WATCHDOG=1")


def _log_stuck_tasks() -> None:
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=3)
        where = [f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in frames]
        log.warning("shutdown-waiting-for", task=task.get_name(), where=where)


def _exit_now() -> None:
    log.error("shutdown-forced", note="tasks did not stop in time; forwarding stays as it is (fail-static)")
    os._exit(0)


def run(opts: Options) -> int:
    try:
        policy = load_policy(opts.policy_path)
    except PolicyError as exc:
        for p in exc.problems:
            log.error("policy", problem=str(p))
        return 2
    try:
        asyncio.run(serve(opts, policy))
    except FailoverdError as exc:
        log.error("fatal", error=str(exc))
        return 1
    return 0
