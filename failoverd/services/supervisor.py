"""The supervisor: reloads (validate the file, ask every service in turn) and each service's status.

Its task is given the services it supervises when the composition starts it; until then it has
none to report on. A reload never stops the daemon: a policy that does not load is refused, and a
service that fails to take a valid one is reported as failed while the others go on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from failoverd.engine import events as ev
from failoverd.errors import PolicyError
from failoverd.observe.logging import get as get_logger
from failoverd.policy import load_policy
from failoverd.policy.model import Policy
from failoverd.services.base import Applied, EngineView, Failed, Service
from failoverd.services.history import History

log = get_logger("failoverd")


class Supervisor:
    """Reload requests (failoverctl reload, MQTT, SIGHUP), taken one at a time by `run`."""

    def __init__(
        self, path: Path, engine: EngineView, history: History, alarm: Callable[[ev.ServiceAlarm], None] | None = None
    ) -> None:
        self.path = path
        self.engine = engine
        self.history = history
        self.alarm = alarm  # the reload-refused alarm: raised while the file on disk is not in force
        self.queue: asyncio.Queue[asyncio.Future[dict[str, Any]]] = asyncio.Queue()
        self.services: tuple[Service, ...] = ()

    def ask(self) -> asyncio.Future[dict[str, Any]]:
        """Queue a reload; the future holds its report (the reload is logged and kept in the history too)."""
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(done)
        return done

    def statuses(self) -> dict[str, dict[str, Any]]:
        return {s.name: s.status() for s in self.services}

    async def run(self, services: Sequence[Service]) -> None:
        self.services = tuple(services)
        while True:
            done = await self.queue.get()
            try:
                report = await reload(self.path, self.engine, self.services, self.history)
            except Exception as exc:  # a bug in a reload must not end the daemon that routes 112
                log.exception("reload-failed")
                report = {"ok": False, "text": f"reload failed: {exc}", "problems": [repr(exc)]}
            if self.alarm is not None:
                if report.get("ok"):
                    self.alarm(ev.ServiceAlarm("reload-refused", "policy", "cleared", "info", report["text"]))
                else:
                    why = "; ".join([str(report.get("text")), *map(str, report.get("problems", [])[:3])])
                    self.alarm(ev.ServiceAlarm("reload-refused", "policy", "raised", "warning", why))
            if not done.done():
                done.set_result(report)


async def reload(path: Path, engine: EngineView, services: Sequence[Service], history: History) -> dict[str, Any]:
    """On any error in the file the running policy stays in force and the reply says why."""
    try:
        new = load_policy(path)
    except PolicyError as exc:
        problems = [str(p) for p in exc.problems]
        for p in problems:
            log.error("reload-refused", problem=p)
        history.add({"kind": "reload", "ok": False, "problems": problems}, time.monotonic())
        # Nothing was re-read, the MQTT command keys neither: a revocation waits for a policy that loads.
        text = "policy refused; the running policy stays in force (nothing re-read, command keys included)"
        return {"ok": False, "text": text, "problems": problems}
    old = engine.policy
    if new.ownership != old.ownership:
        text = "ownership (route protocol, priorities, tables, marks) changed: restart failoverd to apply it"
        log.error("reload-refused", problem=text)
        return {"ok": False, "text": text, "problems": [text]}
    outcome: dict[str, str] = {}
    restart: list[str] = []
    failed: list[str] = []
    for service in services:  # the engine first: the others read the policy it holds
        try:
            result = await service.reconfigure(new)
        except Exception as exc:
            log.exception("reload-service-failed", service=service.name)
            outcome[service.name] = f"failed: {exc!r}"
            failed.append(f"{service.name}: {exc!r}")
            continue
        if isinstance(result, Applied):
            outcome[service.name] = "applied" + (f": {result.detail}" if result.detail else "")
        elif isinstance(result, Failed):
            outcome[service.name] = f"failed: {result.why}"
            failed.append(f"{service.name}: {result.why}")
            log.error("reload-service-failed", service=service.name, why=result.why)
        else:
            outcome[service.name] = f"needs restart: {result.why}"
            restart.append(f"{service.name}: {result.why}")
            log.warning("reload-needs-restart", service=service.name, why=result.why)
    for name, why in _not_running(old, new, {s.name for s in services}):
        outcome[name] = f"needs restart: {why}"
        restart.append(f"{name}: {why}")
        log.warning("reload-needs-restart", service=name, why=why)
    log.warning("policy-reloaded", policy=new.source, failed=failed or None)
    ok = not failed
    history.add({"kind": "reload", "ok": ok, "policy": new.source, "services": outcome}, time.monotonic())
    text = f"policy {new.source} in force" + ("" if ok else f"; {len(failed)} service(s) failed to take it")
    out: dict[str, Any] = {"ok": ok, "text": text, "services": outcome}
    if restart:
        out["needs_restart"] = restart
    if failed:
        out["problems"] = failed
    return out


def _not_running(old: Policy, new: Policy, running: set[str]) -> list[tuple[str, str]]:
    """Services a reload cannot start: MQTT turned on (or changed while off) takes a restart."""
    if "mqtt" not in running and new.control.mqtt != old.control.mqtt:
        return [("mqtt", "MQTT settings (and command keys) are read at start")]
    return []
