"""The notifier service: alarms delivered to webhooks, commands and the journal, over a working uplink, with retries."""

# Theory of operation
# -------------------
# The engine decides every alarm, its escalation steps and repeats (engine/alarms.py); they reach the
# history as `alarm` records. This service reads them from the history's feed and delivers each to
# the notifiers the policy names: the first matching `route` for raised, repeated and notice records,
# the escalation step's notifiers for an escalation. Whoever was told an alarm was raised (or took an
# escalation) is told when it is acknowledged and when it clears, so no one is left with an alarm
# that ended without them knowing.
#
# Delivery must work when the primary is down, which is when it matters. A webhook leaves over the
# first usable uplink in the policy's order, marked like the probes and the MQTT session (the
# gateway's own traffic has no route in the main table on most gateways), so a fiber cut is reported
# over the mobile uplink the moment the engine has judged it. Each notifier has its own bounded
# outbox, worked in order by its own task: a slow or dead endpoint delays only itself, never routing
# and never another notifier. A failed attempt is retried with exponential backoff; while no uplink is
# usable, a webhook waits. The outbox keeps the newest OUTBOX records (the oldest go first, counted):
# memory stays bounded through a day without any path out.

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

from failoverd.control.tls import client_context
from failoverd.engine.decide import usable
from failoverd.observe.logging import get as get_logger
from failoverd.policy.model import NotifierSpec, Policy
from failoverd.probes.base import family_of, marked_socket
from failoverd.services.base import Applied, EngineView, Reconfigured
from failoverd.services.history import History

log = get_logger("failoverd")
OUTBOX = 256  # records waiting per notifier
FEED_KEPT = 1024
BACKOFF = (1.0, 60.0)  # s: the first and the longest wait before trying a failed delivery again
PRIORITY = {"critical": 2, "warning": 4, "info": 6}  # syslog priorities: crit, warning, info


class DeliveryError(Exception):
    """One attempt failed; the message says why (for the status and the log)."""


@dataclass(slots=True)
class Outbox:
    items: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=OUTBOX))
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    failed: int = 0  # attempts that failed
    dropped: int = 0  # pushed out while waiting
    last_error: str | None = None
    last_sent: float | None = None  # wall time

    def put(self, item: dict[str, Any]) -> None:
        if len(self.items) == self.items.maxlen:
            self.dropped += 1
        self.items.append(item)
        self.ready.set()


def document(record: dict[str, Any], site: str) -> dict[str, Any]:
    """The alarm as a notifier receives it (the plain form): the history record, its site and kind."""
    aid = str(record.get("id") or "")
    return {
        "site": site,
        "id": aid,
        "kind": aid.split(":", 1)[0] if aid else "notice",
        "state": record.get("state", "notice"),
        "severity": record.get("severity"),
        "subject": record.get("subject"),
        "level": record.get("level", 0),
        "by": record.get("by") or None,
        "cause": record.get("cause"),
        "at": record.get("wall"),
    }


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat().replace("+00:00", "Z")


def alertmanager(doc: dict[str, Any], started: float | None) -> list[dict[str, Any]]:
    """Alertmanager's v2 API body (POST /api/v2/alerts): one alert, resolved when the alarm cleared."""
    cause = doc.get("cause") or {}
    alert: dict[str, Any] = {
        "labels": {
            "alertname": f"failoverd_{doc['kind'].replace('-', '_')}",
            "severity": str(doc["severity"]),
            "site": doc["site"],
            "subject": str(doc["subject"]),
            "alarm_id": doc["id"] or "notice",
        },
        "annotations": {
            "summary": f"{doc['id'] or doc['subject']}: {cause.get('text', '')}",
            "cause": cause.get("code", ""),
        },
    }
    if started is not None:
        alert["startsAt"] = _iso(started)
    if doc["state"] == "cleared" and doc.get("at") is not None:
        alert["endsAt"] = _iso(float(doc["at"]))
    return [alert]


def journal_fields(doc: dict[str, Any]) -> bytes:
    """journald's native protocol: one datagram of KEY=value lines (no value here holds a newline)."""
    cause = doc.get("cause") or {}
    text = f"{doc['state']} {doc['id'] or doc['subject']} ({doc['severity']}): {cause.get('code')}: {cause.get('text')}"
    fields = {
        "MESSAGE": text,
        "PRIORITY": str(PRIORITY.get(str(doc["severity"]), 6)),
        "SYSLOG_IDENTIFIER": "failoverd",
        "FAILOVERD_SITE": doc["site"],
        "FAILOVERD_ALARM_ID": doc["id"],
        "FAILOVERD_ALARM_STATE": doc["state"],
        "FAILOVERD_SEVERITY": doc["severity"],
        "FAILOVERD_SUBJECT": doc["subject"],
        "FAILOVERD_CAUSE": cause.get("code"),
        "FAILOVERD_LEVEL": str(doc["level"]),
    }
    return "".join(f"{k}={' '.join(str(v).split())}\n" for k, v in fields.items() if v not in (None, "")).encode()


class NotifierService:
    name: ClassVar[str] = "notify"

    def __init__(self, view: EngineView, history: History) -> None:
        self.view = view
        self.history = history
        self.feed = history.subscribe(FEED_KEPT)
        self.outboxes: dict[str, Outbox] = {}
        self.told: dict[str, set[str]] = {}  # alarm id -> notifiers that were told it is raised
        self.raised_at: dict[str, float] = {}  # alarm id -> wall time it was raised (Alertmanager's startsAt)
        self.workers: dict[str, asyncio.Task[None]] = {}

    # -- routing --------------------------------------------------------------------------------------
    def recipients(self, record: dict[str, Any]) -> list[str]:
        spec = self.view.policy.alarms
        aid = str(record.get("id") or "")
        state = record.get("state", "notice")
        kind = aid.split(":", 1)[0] if aid else "notice"
        if state == "escalated":
            level = int(record.get("level", 0))
            names = list(spec.escalation[level - 1][1]) if 0 < level <= len(spec.escalation) else []
        elif state == "resumed":
            names = []  # active before a restart: its people were told then
        elif state in ("cleared", "acked"):
            # Whoever was told it was raised; after a restart (this run told no one), its route.
            told = self.told.get(aid)
            names = (
                sorted(told)
                if told is not None
                else list(spec.notify(str(record.get("severity")), kind, str(record.get("subject"))))
            )
        else:
            names = list(spec.notify(str(record.get("severity")), kind, str(record.get("subject"))))
            if state == "repeated":  # also to the escalation steps it took
                names += sorted(self.told.get(aid, set()) - set(names))
        if aid and state in ("raised", "escalated", "repeated"):
            self.told.setdefault(aid, set()).update(names)
        if aid and state == "raised":
            self.raised_at[aid] = float(record.get("wall", time.time()))
        if state == "cleared":
            self.told.pop(aid, None)
        return [n for n in names if n in spec.notifiers]

    def dispatch(self, record: dict[str, Any]) -> None:
        for name in self.recipients(record):
            box = self.outboxes.setdefault(name, Outbox())
            box.put(record)
            if name not in self.workers or self.workers[name].done():
                self.workers[name] = asyncio.get_running_loop().create_task(self._work(name), name=f"notify-{name}")
        if record.get("state") == "cleared":
            self.raised_at.pop(str(record.get("id")), None)

    # -- the service ----------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while True:
                await self.feed.ready.wait()
                self.feed.ready.clear()
                while self.feed.pending:
                    record = self.feed.pending.popleft()
                    if record.get("kind") == "alarm":
                        self.dispatch(record)
        finally:
            for task in self.workers.values():
                task.cancel()

    async def _work(self, name: str) -> None:
        box = self.outboxes[name]
        delay = BACKOFF[0]
        while True:
            if not box.items:
                box.ready.clear()
                await box.ready.wait()
                continue
            spec = self.view.policy.alarms.notifiers.get(name)
            if spec is None:  # removed from the policy by a reload
                box.items.clear()
                return
            record = box.items[0]
            try:
                try:
                    await self.deliver(spec, record)
                except DeliveryError:
                    raise
                except Exception as exc:  # a bug met by one record must not silence the notifier for good
                    log.exception("notify-bug", notifier=name, alarm=record.get("id"))
                    raise DeliveryError(f"internal error: {exc!r}") from exc
            except DeliveryError as exc:
                box.failed += 1
                if box.last_error != str(exc):
                    log.warning("notify-failed", notifier=name, alarm=record.get("id"), error=str(exc), retry_s=delay)
                box.last_error = str(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF[1])
                continue
            if box.items and box.items[0] is record:
                box.items.popleft()
            box.sent += 1
            box.last_sent = time.time()
            box.last_error = None
            delay = BACKOFF[0]

    async def deliver(self, spec: NotifierSpec, record: dict[str, Any]) -> None:
        doc = document(record, self.view.policy.site)
        try:
            async with asyncio.timeout(spec.timeout):
                if spec.kind == "webhook":
                    await self._webhook(spec, doc)
                elif spec.kind == "exec":
                    await self._exec(spec, doc)
                else:
                    self._journal(spec, doc)
        except TimeoutError:
            raise DeliveryError(f"no answer within {spec.timeout:g}s") from None
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None

    async def _webhook(self, spec: NotifierSpec, doc: dict[str, Any]) -> None:
        assert spec.url is not None  # verify.py: a webhook has a url
        body_doc: Any = alertmanager(doc, self.raised_at.get(doc["id"])) if spec.format == "alertmanager" else doc
        body = json.dumps(body_doc).encode()
        url = urlsplit(spec.url)
        tls = url.scheme == "https"
        host, port = url.hostname or "", url.port or (443 if tls else 80)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        policy, state = self.view.policy, self.view.state
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        address = str(infos[0][4][0])
        # An uplink of the address's family: a dual-stack uplink's twins carry one family each.
        fam = 6 if family_of(address) == socket.AF_INET6 else 4
        via = next((n for n in policy.uplinks if policy.carries(n, fam) and usable(state, n)), None)
        if via is None:
            raise DeliveryError(f"no usable uplink carries IPv{fam}")
        sock = marked_socket(family_of(address), socket.SOCK_STREAM, 0, policy.uplinks[via].fwmark)
        try:
            await loop.sock_connect(sock, (address, port))
        except BaseException:
            sock.close()
            raise
        ctx = client_context(spec.ca_file) if tls else None
        reader, writer = await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname=host if ctx else None)
        try:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: failoverd\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        parts = line.decode("latin-1").split()
        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
        if not 200 <= status < 300:
            raise DeliveryError(f"HTTP status {status or 'none'} from {spec.url} (via {via})")

    async def _exec(self, spec: NotifierSpec, doc: dict[str, Any]) -> None:
        proc = await asyncio.create_subprocess_exec(
            *spec.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, err = await proc.communicate(json.dumps(doc).encode() + b"\n")
        except BaseException:  # cancelled or timed out: the command does not outlive its attempt
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise DeliveryError(f"{spec.argv[0]} exited {proc.returncode}: {tail[0][:200]}")

    def _journal(self, spec: NotifierSpec, doc: dict[str, Any]) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.sendto(journal_fields(doc), spec.socket)

    async def reconfigure(self, policy: Policy) -> Reconfigured:
        for name in [n for n in self.outboxes if n not in policy.alarms.notifiers]:
            self.outboxes[name].ready.set()  # its worker sees the notifier gone and ends
        return Applied(f"{len(policy.alarms.notifiers)} notifiers")

    def status(self) -> dict[str, Any]:
        return {
            name: {
                "queued": len(box.items),
                "sent": box.sent,
                "failed_attempts": box.failed,
                "dropped": box.dropped,
                "last_error": box.last_error,
                "last_sent": box.last_sent,
            }
            for name, box in self.outboxes.items()
        }
