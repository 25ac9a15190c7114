"""Fleet control over MQTT: a retained status with a last will, the decision history, signed commands.

Topics, under `topic_prefix` (default `failoverd`):
- `<prefix>/<site>/status`: retained; what the gateway does now (`online`, classes, uplinks, clock),
  refreshed on every change and every STATUS_EVERY seconds. The broker publishes the last will,
  `online: false`, when the gateway vanishes (kill -9, power, every uplink down).
- `<prefix>/<site>/events`: each journal record (decisions, uplink changes, alarms, commands) as it happens.
- `<prefix>/<site>/cmd` and `<prefix>/fleet/cmd`: signed requests (`failoverd.control.signing`), the
  same command table as the local socket; a fleet request may name `sites` to reach only those.
- `<prefix>/<site>/reply`: the reply to each request, carrying the request's `id`.

The link to the broker is never a reason to stop: it reconnects with backoff, and routing goes on
without it. Commands are taken one at a time, in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import time
from collections import deque
from pathlib import Path
from typing import Any, ClassVar

import aiomqtt

from failoverd.control.api import Gateway
from failoverd.control.commands import COMMANDS, BadRequest, decode_request, dispatch
from failoverd.control.signing import KeyFileError, load_keys, verify
from failoverd.engine.decide import usable
from failoverd.engine.events import ClockState
from failoverd.observe.logging import get as get_logger
from failoverd.policy.model import MqttSpec, Policy
from failoverd.services.base import Applied, NeedsRestart, Reconfigured
from failoverd.statedir import StateDir

log = get_logger("failoverd.mqtt")
STATUS_EVERY = 60.0  # s: the retained status is refreshed at least this often (its `at` shows it is live)
BACKOFF = (1.0, 30.0)  # s: first and longest wait before reconnecting
EVENTS_KEPT = 500  # events queued while the broker is out of reach; the oldest go first
MAX_REQUEST = 64 * 1024
TRANSPORT_FIELDS = ("key", "issued", "sig", "id", "sites")
ISSUED_FILE = "mqtt-issued.json"  # the last `issued` taken under each key


class PathLost(Exception):
    """The uplink the session rides is no longer usable: reconnect over another one now, rather than
    after keepalives time out."""


def clock_trusted(policy: Policy, state: ClockState) -> bool:
    """False while the clock's verdict makes the policy distrust signed commands."""
    reaction = {ClockState.SUSPECT: policy.clock.on_suspect, ClockState.INSANE: policy.clock.on_insane}.get(state)
    return reaction is None or "signed-commands" not in reaction.distrust


class Fleet:
    """The gateway's MQTT session: publishes what happens, takes signed commands."""

    name: ClassVar[str] = "mqtt"

    def __init__(self, gateway: Gateway, spec: MqttSpec, state: StateDir) -> None:
        self.g = gateway
        self.spec = spec
        self.feed = gateway.subscribe(EVENTS_KEPT)
        self.connected = False
        self.site = site = gateway.policy.site  # its topics are chosen now: a new site takes a restart
        p = spec.topic_prefix.rstrip("/")
        self.status_topic = f"{p}/{site}/status"
        self.events_topic = f"{p}/{site}/events"
        self.reply_topic = f"{p}/{site}/reply"
        self.cmd_topic = f"{p}/{site}/cmd"
        self.fleet_topic = f"{p}/fleet/cmd"
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.wake = asyncio.Event()
        self.rerouted = asyncio.Event()  # a class moved: a broker out of reach may be reachable now
        self.via: str | None = None  # the uplink the session rides
        self.path_lost = asyncio.Event()
        self.state = state
        self.last_issued: dict[str, float] = {}
        saved = state.read(ISSUED_FILE)
        if saved.note:
            log.warning("state", note=saved.note)
        with contextlib.suppress(AttributeError, ValueError, TypeError):  # not a mapping of numbers: start afresh
            self.last_issued = {str(k): float(v) for k, v in saved.document.items()}
        self.keys: dict[str, bytes] = {}
        self.key_error = ""
        if spec.keys_file:
            try:
                self.keys = load_keys(Path(spec.keys_file))
            except KeyFileError as exc:
                # Status and events still flow; every command is refused with this reason.
                log.error("mqtt-keys", error=str(exc), note="remote commands are refused until this is fixed")
                self.key_error = str(exc)

    # -- the service --------------------------------------------------------------------------------
    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._follow(), name="mqtt-records")
            tg.create_task(self._sessions(), name="mqtt-session")

    async def reconfigure(self, policy: Policy) -> Reconfigured:
        if policy.control.mqtt != self.spec:
            return NeedsRestart("MQTT settings (and command keys) are read at start")
        if policy.site != self.site:
            return NeedsRestart(f"the site's topics ({self.status_topic}) are chosen at start")
        return Applied()

    def status(self) -> dict[str, Any]:
        return {"broker": f"{self.spec.host}:{self.spec.port}", "connected": self.connected, "via": self.via}

    async def _follow(self) -> None:
        """Each history record: queued for the events topic, and the status refreshed."""
        while True:
            await self.feed.ready.wait()
            self.feed.ready.clear()
            while self.feed.pending:
                record = self.feed.pending.popleft()
                self.events.append(record)
                self.wake.set()
                if record.get("kind") == "decision":
                    self.rerouted.set()
                if record.get("kind") == "uplink" and self.via is not None and not usable(self.g.state, self.via):
                    self.path_lost.set()

    # -- the session --------------------------------------------------------------------------------
    async def _sessions(self) -> None:
        delay = BACKOFF[0]
        while True:
            try:
                async with self._client() as client:
                    delay = BACKOFF[0]
                    self.connected = True
                    broker = f"{self.spec.host}:{self.spec.port}"
                    log.info("mqtt-connected", broker=broker, via=self.via, status=self.status_topic)
                    try:
                        await self._session(client)
                    except asyncio.CancelledError:
                        # Stopping: say so before leaving, or the broker would publish the will
                        # ("connection lost") for a clean stop.
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(self._publish_status(client, online=False, why="stopped"), 1.0)
                        raise
            except PathLost:
                log.info("mqtt-rerouting", uplink=self.via, note="the uplink the session used is down")
                delay = 0.0
            except aiomqtt.MqttError as exc:
                broker = f"{self.spec.host}:{self.spec.port}"
                log.warning("mqtt-unreachable", broker=broker, error=str(exc), retry_s=delay)
            except OSError as exc:  # a password or CA file that cannot be read, a refused TLS context
                log.error("mqtt-setup", error=str(exc), retry_s=delay)
            except Exception:  # a bug here must not stop routing: the TaskGroup would end the daemon
                log.exception("mqtt-failed", retry_s=delay)
            self.connected = False
            # Back off, but try again at once when routing changes: at start-up, or while every path
            # to the broker was down, the first route to it should not wait out a long backoff.
            self.rerouted.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.rerouted.wait(), delay)
            delay = min(max(delay * 2, BACKOFF[0]), BACKOFF[1])

    def _client(self) -> aiomqtt.Client:
        s = self.spec
        will = json.dumps({"online": False, "site": self.site, "why": "connection lost"})
        password = None
        if s.password_file:
            password = Path(s.password_file).read_text(encoding="utf-8").strip()
        tls = None
        if s.tls:
            tls = ssl.create_default_context(cafile=s.ca_file)
        # Over the preferred uplink while it is usable, else the first usable one, marked like the
        # probes: the gateway's own traffic has no route in the main table on most gateways.
        usable_now = [n for n in self.g.policy.uplinks if usable(self.g.state, n)]
        self.via = s.uplink if s.uplink in usable_now else next(iter(usable_now), None)
        self.path_lost.clear()
        client = aiomqtt.Client(
            s.host,
            s.port,
            identifier=s.client_id or f"failoverd-{self.site}",
            username=s.username,
            password=password,
            will=aiomqtt.Will(self.status_topic, will, qos=1, retain=True),
            tls_context=tls,
            keepalive=s.keepalive,  # the broker publishes the will 1.5 keepalives after the gateway vanishes
            timeout=10,
        )
        if self.via is not None:
            _mark_before_connect(client, self.g.policy.uplinks[self.via].fwmark)
        return client

    async def _session(self, client: aiomqtt.Client) -> None:
        for topic in (self.cmd_topic, self.fleet_topic):
            await client.subscribe(topic, qos=1)
        await self._publish_status(client, online=True)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._publisher(client), name="mqtt-publish")
                tg.create_task(self._reader(client), name="mqtt-commands")
                tg.create_task(self._watch_path(), name="mqtt-path")
        except* (PathLost, aiomqtt.MqttError) as ended:
            raise ended.exceptions[0] from None  # why the session ended, as itself, for _sessions

    async def _watch_path(self) -> None:
        await self.path_lost.wait()
        raise PathLost

    async def _reader(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            await self._command(client, message)

    async def _publisher(self, client: aiomqtt.Client) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), STATUS_EVERY)
            self.wake.clear()
            while self.events:
                record = self.events.popleft()
                try:
                    await client.publish(self.events_topic, json.dumps(record), qos=1)
                except BaseException:
                    self.events.appendleft(record)  # kept for the next session
                    raise
            await self._publish_status(client, online=True)

    async def _publish_status(self, client: aiomqtt.Client, online: bool, why: str = "") -> None:
        await client.publish(self.status_topic, json.dumps(self.document(online, why)), qos=1, retain=True)

    def document(self, online: bool, why: str = "") -> dict[str, Any]:
        """The retained status: what the gateway does now, or why it is offline."""
        policy, st = self.g.policy, self.g.state
        out: dict[str, Any] = {"online": online, "site": self.site, "at": time.time()}
        if why:
            out["why"] = why
        if online:
            out.update(
                pid=os.getpid(),
                policy=policy.source,
                clock=st.clock.state.value,
                classes={n: (f"via {c.uplink}" if c.route == "via" else c.route) for n, c in st.classes.items()},
                uplinks={n: u.status for n, u in st.uplinks.items()},
                overrides=[o.describe() for o in st.overrides],
            )
        return out

    # -- commands -----------------------------------------------------------------------------------
    async def _command(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        reply = await self.handle(str(message.topic), message.payload)
        if reply is not None:
            await client.publish(self.reply_topic, json.dumps(reply), qos=1)

    async def handle(self, topic: str, payload: Any) -> dict[str, Any] | None:
        """One request as it came off the broker; the reply to publish (None: not for this gateway)."""
        site = self.site
        if not isinstance(payload, bytes | bytearray) or len(payload) > MAX_REQUEST:
            return self._refused(None, f"a request is a JSON object of at most {MAX_REQUEST} bytes", {})
        try:
            request = decode_request(payload)
        except BadRequest as exc:
            return self._refused(None, str(exc), {})
        if not isinstance(request, dict):
            return self._refused(None, "a request is a JSON object with a cmd", {})
        rid = request.get("id")
        rid = rid if isinstance(rid, str) and len(rid) <= 128 else None
        sites = request.get("sites")
        if topic == self.fleet_topic and sites is not None:
            if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites):
                return self._refused(rid, "sites must be a list of site names", request)
            if site not in sites:
                return None  # a fleet command for other gateways
        if self.key_error:
            return self._refused(rid, f"this gateway cannot check signatures: {self.key_error}", request)
        verdict = verify(
            request,
            self.keys,
            self.last_issued,
            wall=time.time(),
            max_age=self.spec.max_age,
            clock_trusted=clock_trusted(self.g.policy, self.g.state.clock.state),
        )
        if not verdict.ok:
            return self._refused(rid, verdict.reason, request)
        self.last_issued[verdict.key] = verdict.issued
        self._save_issued()
        command = {k: v for k, v in request.items() if k not in TRANSPORT_FIELDS}
        name = command.get("cmd")
        cmd = COMMANDS.get(name) if isinstance(name, str) else None  # a list or object is not hashable
        if cmd is not None and cmd.arg("by") is not None:
            given = command.get("by")
            command["by"] = f"mqtt:{verdict.key}" + (f"/{given}" if isinstance(given, str) and given else "")
        reply = await dispatch(self.g, command)
        log.info(
            "mqtt-command",
            request=command,
            key=verdict.key,
            ok=reply.get("ok"),
            reply=reply.get("text") or reply.get("error"),
            note=verdict.reason or None,
        )
        if verdict.reason:
            reply["note"] = verdict.reason
        self.wake.set()  # the status may have changed
        return {"id": rid, "site": site, **reply}

    def _refused(self, rid: str | None, reason: str, request: dict[str, Any]) -> dict[str, Any]:
        log.warning("mqtt-refused", reason=reason, cmd=request.get("cmd"), key=request.get("key"))
        cmd, key = request.get("cmd"), request.get("key")
        record = {"kind": "remote-refused", "reason": reason, "cmd": cmd if isinstance(cmd, str) else None}
        record["key"] = key if isinstance(key, str) else None
        self.g.record(record)  # kept in the history
        return {"id": rid, "site": self.site, "ok": False, "error": reason}

    def _save_issued(self) -> None:
        self.state.replace(
            ISSUED_FILE, self.last_issued
        )  # on disk before the command runs: a restart must not reopen a replay


def _mark_before_connect(client: aiomqtt.Client, mark: int) -> None:
    """Make the session's TCP socket carry `mark` from its first packet.

    The mark must be set before connect(): the route is chosen then, and aiomqtt's socket_options are
    applied only after. paho creates the socket in `_create_socket_connection` (paho-mqtt 2.x, pinned
    through aiomqtt < 3); this replaces it on this one client.
    """
    paho = client._client

    def connect() -> socket.socket:
        host, port, timeout = paho._host, paho._port, paho._connect_timeout
        error: OSError = OSError(f"no address for {host}")
        for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
                sock.settimeout(timeout)
                sock.connect(address)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            return sock
        raise error

    paho._create_socket_connection = connect  # type: ignore[method-assign]
