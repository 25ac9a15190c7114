"""A reload: validate the policy file, then ask every service in turn to take it, and say what each did."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from failoverd.errors import PolicyError
from failoverd.observe.logging import get as get_logger
from failoverd.policy import load_policy
from failoverd.services.base import Applied, EngineView, Service
from failoverd.services.history import History

log = get_logger("failoverd")


class Reloads:
    """Reload requests (failoverctl reload, MQTT, SIGHUP), taken one at a time by `run`."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[asyncio.Future[dict[str, Any]]] = asyncio.Queue()

    def ask(self) -> asyncio.Future[dict[str, Any]]:
        """Queue a reload; the future holds its report (the reload loop also logs it)."""
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(done)
        return done

    async def request(self) -> dict[str, Any]:
        return await self.ask()

    async def run(self, path: Path, engine: EngineView, services: Sequence[Service], history: History) -> None:
        while True:
            done = await self.queue.get()
            report = await reload(path, engine, services, history)
            if not done.done():
                done.set_result(report)


async def reload(path: Path, engine: EngineView, services: Sequence[Service], history: History) -> dict[str, Any]:
    """On any error the running policy stays in force and the reply says why."""
    try:
        new = load_policy(path)
    except PolicyError as exc:
        problems = [str(p) for p in exc.problems]
        for p in problems:
            log.error("reload-refused", problem=p)
        history.add({"kind": "reload", "ok": False, "problems": problems}, time.monotonic())
        return {"ok": False, "text": "policy refused; the running policy stays in force", "problems": problems}
    if new.ownership != engine.policy.ownership:
        text = "ownership (route protocol, priorities, tables, marks) changed: restart failoverd to apply it"
        log.error("reload-refused", problem=text)
        return {"ok": False, "text": text, "problems": [text]}
    outcome: dict[str, str] = {}
    restart: list[str] = []
    for service in services:  # the engine first: the others read the policy it holds
        result = await service.reconfigure(new)
        if isinstance(result, Applied):
            outcome[service.name] = "applied" + (f": {result.detail}" if result.detail else "")
        else:
            outcome[service.name] = f"needs restart: {result.why}"
            restart.append(f"{service.name}: {result.why}")
            log.warning("reload-needs-restart", service=service.name, why=result.why)
    log.warning("policy-reloaded", policy=new.source)
    history.add({"kind": "reload", "ok": True, "policy": new.source, "services": outcome}, time.monotonic())
    out: dict[str, Any] = {"ok": True, "text": f"policy {new.source} in force", "services": outcome}
    if restart:
        out["needs_restart"] = restart
    return out
