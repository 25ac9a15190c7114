"""The metrics service: a Prometheus endpoint served on the daemon's loop, rendered off it; off unless asked."""

# Theory of operation
# -------------------
# A scrape must never hold up routing. The engine service is a task on the same event loop, so the
# loop does only what is cheap: it reads the request, takes a `Snapshot` (references to the frozen
# engine state and policy, copies of a few counters) and writes the answer. Rendering the text (and
# the process collector's reads of /proc) runs in a worker thread. Connections are bounded in number,
# in request size and in time, so that a slow or hostile client costs a socket, never the loop.
#
# The service runs whether or not the policy enables the endpoint: it counts class switches from the
# start (a reload that turns metrics on reports them since the daemon started), and a reload can turn
# the endpoint on, off, or move it, without a restart.

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, ClassVar

from failoverd.control.api import Feed
from failoverd.engine.state import EngineState
from failoverd.observe.logging import get as get_logger
from failoverd.observe.snapshot import CONTENT_TYPE, EngineCounters, ProbeCount, Snapshot
from failoverd.policy.model import MetricsSpec, Policy
from failoverd.services.base import Applied, Failed, Reconfigured
from failoverd.services.engine import EngineService
from failoverd.services.history import History
from failoverd.services.probes import ProbeService

log = get_logger("failoverd")
RETRY = 10.0  # s: a listen that failed at start (address not there yet, port taken) is tried again
MAX_CLIENTS = 4  # connections served at once; more are closed at once (Prometheus scrapes one at a time)
REQUEST_BYTES = 8192  # a request head larger than this is refused
CLIENT_TIMEOUT = 5.0  # s: to send the request head, and to take the answer


class SwitchCount(Feed):
    """Counts the history's decisions per class as they are written (the engine keeps no such counter).

    A Feed that counts instead of queueing: History calls `put` for every record, synchronously, so
    no decision is missed however rarely Prometheus scrapes. A class's first placement after the
    start (from "pending") is not a switch."""

    def __init__(self, state: EngineState) -> None:
        super().__init__(keep=1)
        self.routes: dict[str, str] = {n: c.route for n, c in state.classes.items()}
        self.counts: dict[str, int] = {}

    def put(self, record: dict[str, Any]) -> None:
        if record.get("kind") != "decision":
            return
        cls = str(record.get("class"))
        before = self.routes.get(cls, "pending")
        self.routes[cls] = str(record.get("route"))
        if before != "pending":
            self.counts[cls] = self.counts.get(cls, 0) + 1


def listen_text(spec: MetricsSpec) -> str:
    return f"[{spec.address}]:{spec.port}" if ":" in spec.address else f"{spec.address}:{spec.port}"


class MetricsService:
    name: ClassVar[str] = "metrics"

    def __init__(self, engine: EngineService, probes: ProbeService, history: History) -> None:
        self.engine = engine
        self.probes = probes
        self.switches = SwitchCount(engine.state)
        history.feeds.append(self.switches)
        self.spec: MetricsSpec | None = engine.policy.control.metrics
        self.server: asyncio.Server | None = None
        self.error: str | None = None
        self.changed = asyncio.Event()
        self.binding = asyncio.Lock()  # the run loop's retry and a reload never bind at once
        self.clients = 0
        self.scrapes = 0

    # -- the service --------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while True:
                async with self.binding:
                    if self.spec is not None and self.server is None:
                        await self._open(self.spec)
                retry = RETRY if self.spec is not None and self.server is None else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(retry):
                        await self.changed.wait()
                self.changed.clear()
        finally:
            self._close()

    async def reconfigure(self, policy: Policy) -> Reconfigured:
        async with self.binding:
            result = await self._rebind(policy.control.metrics)
        self.changed.set()  # the run loop retries (or stops retrying) for the new address
        return result

    async def _rebind(self, new: MetricsSpec | None) -> Reconfigured:
        old = self.spec
        if new == old and (new is None or self.server is not None):
            return Applied("off" if new is None else f"listening on {listen_text(new)}")
        # Close first: the new address may overlap the old one (127.0.0.1:9469 -> 0.0.0.0:9469).
        self._close()
        self.spec = new
        if new is None:
            log.info("metrics-off")
            return Applied("endpoint off")
        if await self._open(new):
            return Applied(f"listening on {listen_text(new)}")
        why = f"cannot listen on {listen_text(new)}: {self.error}"
        if old is not None and old != new and await self._open(old):
            self.spec = old
            return Failed(f"{why}; still on {listen_text(old)}")
        return Failed(f"{why}; retried every {RETRY:g}s")

    def status(self) -> dict[str, Any]:
        return {
            "listen": None if self.spec is None else listen_text(self.spec),
            "serving": self.server is not None,
            "scrapes": self.scrapes,
            "error": self.error,
        }

    async def _open(self, spec: MetricsSpec) -> bool:
        try:
            self.server = await asyncio.start_server(
                self._client, spec.address, spec.port, limit=REQUEST_BYTES, reuse_address=True
            )
        except OSError as exc:
            self.error = exc.strerror or str(exc)
            log.error("metrics-unavailable", listen=listen_text(spec), error=self.error, retry_s=RETRY)
            return False
        self.error = None
        log.info("metrics-listening", listen=listen_text(spec))
        return True

    def _close(self) -> None:
        if self.server is not None:
            self.server.close()  # stops accepting; a scrape in flight finishes on its own
            self.server = None

    # -- HTTP ---------------------------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= MAX_CLIENTS:
            writer.close()
            return
        self.clients += 1
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                status, ctype, body = await self._answer(head)
                send = b"" if head.startswith(b"HEAD ") else body
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n".encode("ascii")
                    + send
                )
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that went away or dawdled: nothing to tell it
        finally:
            self.clients -= 1
            writer.close()

    async def _answer(self, head: bytes) -> tuple[str, str, bytes]:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET /metrics\n"
        if target != b"/metrics":
            return "404 Not Found", "text/plain", b"failoverd: metrics are at /metrics\n"
        try:
            body = await asyncio.to_thread(_render, self.snapshot())
        except Exception:  # a bug in a metric must cost the scrape, never the daemon that routes 112
            log.exception("metrics-failed")
            return "500 Internal Server Error", "text/plain", b"failoverd: rendering the metrics failed; see the log\n"
        self.scrapes += 1
        return "200 OK", CONTENT_TYPE, body

    def snapshot(self) -> Snapshot:
        """What one scrape reports, taken now, on the loop (cheap: references and a few integers)."""
        e = self.engine
        return Snapshot(
            policy=e.policy,
            state=e.state,
            mono=time.monotonic(),
            probes={k: ProbeCount(v.done, v.lost) for k, v in self.probes.stats.items()},
            switches=dict(self.switches.counts),
            engine=EngineCounters(
                steps=e.steps,
                queued=e.inbox.qsize(),
                last_step=e.last_step,
                step_time=e.step_time.view(),
                effect_latency=e.effect_latency.view(),
            ),
        )


def _render(snapshot: Snapshot) -> bytes:
    """In the worker thread: the first scrape imports prometheus_client there, not on the loop."""
    from failoverd.observe.metrics import render  # noqa: PLC0415 (prometheus_client only with an endpoint)

    return render(snapshot)
