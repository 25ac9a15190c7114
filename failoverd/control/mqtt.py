"""Fleet control over MQTT: a retained status with a last will, the decision history, signed commands.

Topics, under `topic_prefix` (default `failoverd`):
- `<prefix>/<site>/status`: retained; what the gateway does now (`online`, classes, uplinks, clock),
  refreshed on every change and every STATUS_EVERY seconds. The broker publishes the last will,
  `online: false`, when the gateway vanishes (kill -9, power, every uplink down).
- `<prefix>/<site>/events`: each journal record (decisions, uplink changes, alarms, commands) as it happens.
- `<prefix>/<site>/cmd` and `<prefix>/fleet/cmd`: signed requests (`failoverd.control.signing`), the
  same command table as the local socket. Each names its destination inside what is signed (the site,
  or the fleet and optionally which `sites`): a copy replayed on another topic is refused.
- `<prefix>/<site>/reply`: the reply to each request, carrying the request's `id`.

The link to the broker is never a reason to stop: it reconnects with backoff, and routing goes on
without it. Commands are taken one at a time, in arrival order, through a bounded backlog; what a flood
of them may cost (log lines, history records, replies, commands per key) is bounded in
`failoverd.control.intake`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import time
from collections import deque
from ipaddress import ip_address
from pathlib import Path
from typing import Any, ClassVar

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from failoverd.control.api import Gateway
from failoverd.control.commands import COMMANDS, BadRequest, decode_request, dispatch
from failoverd.control.intake import BACKLOG, Intake
from failoverd.control.intake import COMMANDS as COMMAND_RATE
from failoverd.control.signing import Here, KeyFileError, for_others, load_keys, verify
from failoverd.control.tls import SOCKET_OPTIONS, client_context
from failoverd.engine import events as ev
from failoverd.engine.decide import usable
from failoverd.engine.events import ClockState
from failoverd.hostport import join_hostport
from failoverd.observe.logging import get as get_logger
from failoverd.observe.status import redundancy_summary
from failoverd.policy.model import MqttSpec, Policy, UplinkSpec
from failoverd.probes.base import marked_socket, probe_device, zoned
from failoverd.services.base import Applied, Failed, NeedsRestart, Reconfigured
from failoverd.statedir import StateDir

log = get_logger("failoverd.mqtt")
STATUS_EVERY = 60.0  # s: the retained status is refreshed at least this often (its `at` shows it is live)
BACKOFF = (1.0, 30.0)  # s: first and longest wait before reconnecting
START_WAIT = 5.0  # s: at most this long, at start, for an uplink to ride before connecting without one
EVENTS_KEPT = 500  # events queued while the broker is out of reach; the oldest go first
MAX_REQUEST = 64 * 1024
TRANSPORT_FIELDS = ("key", "issued", "sig", "id", "dest")
SAVE_EVERY = 1.0  # s: the last-issued table is written at most this often for refused commands
ISSUED_FILE = "mqtt-issued.json"  # the last `issued` taken under each key


def _family(host: str) -> int | None:
    """The family of a broker given by address; None for a name."""
    try:
        return ip_address(host.strip("[]")).version
    except ValueError:
        return None


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
        self.down_since: float | None = None  # monotonic: since when no session (the alarm's clock)
        self.unreachable_raised = False
        self.site = site = gateway.policy.site  # its topics are chosen now: a new site takes a restart
        p = spec.topic_prefix.rstrip("/")
        self.status_topic = f"{p}/{site}/status"
        self.events_topic = f"{p}/{site}/events"
        self.reply_topic = f"{p}/{site}/reply"
        self.cmd_topic = f"{p}/{site}/cmd"
        self.fleet_topic = f"{p}/fleet/cmd"
        self.prefix = p
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.wake = asyncio.Event()
        self.rerouted = asyncio.Event()  # a class moved: a broker out of reach may be reachable now
        self.via: str | None = None  # the uplink the session rides
        self.path_lost = asyncio.Event()
        self.intake = Intake(time.monotonic())  # the backlog of requests and what refusing them may cost
        self.issued_unsaved = False  # a rate-limited command's `issued` is kept, not yet on disk
        self.issued_saved_at = -SAVE_EVERY
        self.requests = asyncio.Event()  # the backlog has requests
        self.state = state
        self.last_issued: dict[str, float] = {}
        saved = state.read(ISSUED_FILE)
        if saved.note:
            log.warning("state", note=saved.note)
        with contextlib.suppress(AttributeError, ValueError, TypeError):  # not a mapping of numbers: start afresh
            self.last_issued = {str(k): float(v) for k, v in saved.document.items()}
        self.keys: dict[str, Ed25519PublicKey] = {}
        self.key_error = ""
        self._read_keys(spec.keys_file)

    def _read_keys(self, keys_file: str | None) -> str:
        """Take the public keys from `keys_file`, at start and on every reload (revocation is deleting a
        line and reloading). A file that does not load leaves no key in force: status and events still
        flow, every command is refused with this reason. Returns that reason ("" if the file loaded)."""
        self.keys, self.key_error = {}, ""
        if not keys_file:
            return ""
        try:
            self.keys = load_keys(Path(keys_file))
        except KeyFileError as exc:
            log.error("mqtt-keys", error=str(exc), note="remote commands are refused until this is fixed")
            self.key_error = str(exc)
        else:
            log.info("mqtt-keys", file=keys_file, keys=sorted(self.keys))
        return self.key_error

    # -- the service --------------------------------------------------------------------------------
    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._follow(), name="mqtt-records")
            tg.create_task(self._sessions(), name="mqtt-session")

    async def reconfigure(self, policy: Policy) -> Reconfigured:
        """The command keys and max_age are taken live, whatever else changed; the broker, the session
        and the topics take a restart."""
        new = policy.control.mqtt
        error = self._read_keys(new.keys_file)
        self.spec = dataclasses.replace(self.spec, keys_file=new.keys_file, max_age=new.max_age)
        restart = ""
        if policy.site != self.site:
            restart = f"the site's topics ({self.status_topic}) are chosen at start"
        elif new != self.spec:
            restart = "the broker, session and topic settings are read at start (command keys were re-read)"
        if error:
            also = f" (and {restart}: restart to apply)" if restart else ""
            return Failed(f"command keys: {error}; every remote command is refused until it is fixed{also}")
        if restart:
            return NeedsRestart(restart)
        return Applied(f"{len(self.keys)} command keys" if self.spec.keys_file else "no command keys")

    def status(self) -> dict[str, Any]:
        keys: str | list[str] = f"refused: {self.key_error}" if self.key_error else sorted(self.keys)
        return {
            "broker": join_hostport(self.spec.host, self.spec.port),
            "connected": self.connected,
            "via": self.via,
            "command_keys": keys,
        }

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
                elif record.get("kind") in ("uplink", "decision") and self.via is None and self._usable_now():
                    # A session made (or being made) while no uplink of its family was usable, at start most
                    # often, rides whatever the main table says, unmarked and, over IPv6, unbound: moved onto
                    # an uplink once one is. (Set while connecting, it ends the session as soon as it is
                    # made.) Only one of its family will do: an IPv4 twin's table has no route to an IPv6
                    # broker, and a session moved for it would be made unmarked again, and moved again.
                    self.path_lost.set()

    # -- the session --------------------------------------------------------------------------------
    def _reachable(self, yes: bool, why: str = "") -> None:
        """The mqtt-unreachable alarm: raised after `unreachable_alarm` without a session, cleared on the next.
        Judged at each attempt to connect, so raised within that plus the longest backoff: a broker
        restart or a failover of the path to it stays below it."""
        broker = join_hostport(self.spec.host, self.spec.port)
        if yes:
            self.down_since = None
            if self.unreachable_raised:
                self.unreachable_raised = False
                self.g.alarm(ev.ServiceAlarm("mqtt-unreachable", "mqtt", "cleared", "info", f"connected to {broker}"))
            return
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
        if not self.unreachable_raised and now - self.down_since >= self.spec.unreachable_alarm:
            self.unreachable_raised = True
            text = f"no session with the broker {broker} for {now - self.down_since:.0f}s: {why}"
            self.g.alarm(ev.ServiceAlarm("mqtt-unreachable", "mqtt", "raised", "warning", text))

    async def _sessions(self) -> None:
        delay = BACKOFF[0]
        why = "not connected yet"
        if not self._usable_now():
            # At start no uplink is judged yet: wait a moment for the first usable one, so the session is
            # steered from its first packet rather than made over the main table and moved a moment later.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(START_WAIT):  # not wait_for: see _publisher
                    await self.rerouted.wait()
        while True:
            self._reachable(False, why)
            try:
                async with self._client() as client:
                    delay = BACKOFF[0]
                    self.connected = True
                    self._reachable(True)
                    broker = join_hostport(self.spec.host, self.spec.port)
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
                if self.via is None:
                    log.info("mqtt-rerouting", uplink=None, note="an uplink is usable now: the session moves onto it")
                    why = "moving onto a usable uplink"
                else:
                    log.info("mqtt-rerouting", uplink=self.via, note="the uplink the session used is down")
                    why = "the uplink the session used went down"
                delay = 0.0
            except aiomqtt.MqttError as exc:
                broker = join_hostport(self.spec.host, self.spec.port)
                log.warning("mqtt-unreachable", broker=broker, error=str(exc), retry_s=delay)
                why = str(exc)
            except OSError as exc:  # a password, CA or certificate file that cannot be read or does not fit
                log.error("mqtt-setup", error=str(exc), retry_s=delay)
                why = f"setup: {exc}"
            except Exception:  # a bug here must not stop routing: the TaskGroup would end the daemon
                log.exception("mqtt-failed", retry_s=delay)
            self.connected = False
            # Back off, but try again at once when routing changes: at start-up, or while every path
            # to the broker was down, the first route to it should not wait out a long backoff.
            self.rerouted.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for: see _publisher
                    await self.rerouted.wait()
            delay = min(max(delay * 2, BACKOFF[0]), BACKOFF[1])

    def _usable_now(self) -> list[str]:
        """The engine uplinks usable now that carry the broker's family (any, for a broker by name)."""
        pol, family = self.g.policy, _family(self.spec.host)
        return [n for n in pol.uplinks if pol.carries(n, family) and usable(self.g.state, n)]

    def _client(self) -> aiomqtt.Client:
        s = self.spec
        will = json.dumps({"online": False, "site": self.site, "why": "connection lost"})
        password = None
        if s.password_file:
            password = Path(s.password_file).read_text(encoding="utf-8").strip()
        tls = client_context(s.ca_file, s.cert_file, s.cert_key_file) if s.tls else None
        # Over the preferred uplink while it is usable, else the first usable one, marked like the
        # probes: the gateway's own traffic has no route in the main table on most gateways.
        # A broker given by address goes over an uplink of its family (a dual-stack uplink's twins
        # carry one each, policy/compile.py); a name is resolved by the client, in either.
        pol = self.g.policy
        usable_now = self._usable_now()
        preferred = pol.twin(s.uplink, _family(s.host) or 4) if s.uplink is not None else None
        self.via = preferred if preferred in usable_now else next(iter(usable_now), None)
        self.path_lost.clear()
        client = aiomqtt.Client(
            s.host,
            s.port,
            identifier=s.client_id or f"failoverd-{self.site}",
            username=s.username,
            password=password,
            will=aiomqtt.Will(self.status_topic, will, qos=1, retain=True),
            tls_context=tls,
            socket_options=SOCKET_OPTIONS,
            keepalive=s.keepalive,  # the broker publishes the will 1.5 keepalives after the gateway vanishes
            timeout=10,
            # Bounded like the backlog it feeds: while the backlog keeps up this queue stays near empty,
            # and should the loop fall behind, the client drops the newest rather than growing.
            max_queued_incoming_messages=BACKLOG,
        )
        if self.via is not None:
            _steer_before_connect(client, self.g.policy.uplinks[self.via])
        return client

    async def _session(self, client: aiomqtt.Client) -> None:
        for topic in (self.cmd_topic, self.fleet_topic):
            await client.subscribe(topic, qos=1)
        await self._publish_status(client, online=True)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._publisher(client), name="mqtt-publish")
                tg.create_task(self._reader(client), name="mqtt-requests")
                tg.create_task(self._serve(client), name="mqtt-commands")
                tg.create_task(self._watch_path(), name="mqtt-path")
        except* (PathLost, aiomqtt.MqttError) as ended:
            raise ended.exceptions[0] from None  # why the session ended, as itself, for _sessions

    async def _watch_path(self) -> None:
        await self.path_lost.wait()
        raise PathLost

    async def _reader(self, client: aiomqtt.Client) -> None:
        """Requests off the wire into the bounded backlog, as fast as they come: when handling falls
        behind, the oldest are dropped there, not queued without bound in the client."""
        async for message in client.messages:
            self.intake.backlog.push(message)
            self.requests.set()

    async def _serve(self, client: aiomqtt.Client) -> None:
        """The backlog, one request at a time; and the refusals' summary at the end of each interval."""
        while True:
            message = self.intake.backlog.pop()
            if message is None:
                self._summarise(idle=True)
                self.requests.clear()
                summary_due = self.intake.due(time.monotonic()) + 0.01
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(summary_due):  # not wait_for: see _publisher
                        await self.requests.wait()
                continue
            await self._command(client, message)
            self._summarise()
            await asyncio.sleep(0)  # probes and the engine run between two requests, however many wait

    def _summarise(self, idle: bool = False) -> None:
        """The refusals' summary when its interval is over; and a kept `issued` on disk once the backlog
        is empty (or a second after the last write, while a flood lasts)."""
        if self.issued_unsaved and (idle or time.monotonic() - self.issued_saved_at >= SAVE_EVERY):
            self._save_issued()
        summary = self.intake.summary(time.monotonic())
        if summary is not None:
            log.warning("mqtt-refused-summary", **{k: v for k, v in summary.items() if k != "kind"})
            self.g.record(summary)

    async def _publisher(self, client: aiomqtt.Client) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that comes as the wait
                # ends, and a fiber cut does just that (the record that wakes this task also ends the
                # session): the task then went on publishing over the dead path until a publish timed out
                # (10 s), and the session moved to another uplink only then.
                async with asyncio.timeout(STATUS_EVERY):
                    await self.wake.wait()
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
                # For the fleet view (control/fleetview.py): a class is on backup when it leaves the first
                # uplink of its path, on satellite when its uplink is of that kind.
                primary={
                    n: policy.classes[n].path[0] for n in st.classes if n in policy.classes and policy.classes[n].path
                },
                kinds={n: policy.uplinks[n].kind for n in st.uplinks if n in policy.uplinks},
                redundancy=redundancy_summary(policy, st),
                overrides=[o.describe() for o in st.overrides],
                alarms={a.id: {"severity": a.severity, "acked_by": a.acked_by} for a in st.alarms.values()},
            )
        return out

    # -- commands -----------------------------------------------------------------------------------
    async def _command(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        try:
            reply = await self.handle(str(message.topic), message.payload)
        except Exception:  # a bug met by one request must not end the session, nor the daemon with it
            seen = self.intake.refused(time.monotonic(), "internal error", None, verified=False)
            if seen.in_full:
                log.exception("mqtt-command-failed", topic=str(message.topic))
            return
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
        here = Here(self.prefix, site, fleet_topic=topic == self.fleet_topic)
        if for_others(request, here):
            return None  # a fleet command for other gateways
        if self.key_error:
            return self._refused(rid, f"this gateway cannot check signatures: {self.key_error}", request)
        verdict = verify(
            request,
            self.keys,
            self.last_issued,
            here=here,
            wall=time.time(),
            max_age=self.spec.max_age,
            clock_trusted=clock_trusted(self.g.policy, self.g.state.clock.state),
        )
        if not verdict.ok:  # a key named in a refusal verdict is one whose signature held (a replay...)
            return self._refused(rid, verdict.reason, request, verified=bool(verdict.key))
        wait = self.intake.admit(verdict.key, time.monotonic())
        if wait:
            # Seen, so never run later, even after a restart: on disk when the backlog is empty, or at
            # most once a second while it is not (a key over its rate must not become a stream of flash
            # writes).
            self.last_issued[verdict.key] = verdict.issued
            self.issued_unsaved = True
            if time.monotonic() - self.issued_saved_at >= SAVE_EVERY:
                self._save_issued()
            return self._refused(rid, _rate_limited(verdict.key, wait), request, verified=True)
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

    def _refused(
        self, rid: str | None, reason: str, request: dict[str, Any], *, verified: bool = False
    ) -> dict[str, Any] | None:
        """The reply to a refused request, or None when the refusals' budget has none left for it. The
        first refusals of an interval are logged and kept in the history as themselves, the rest counted
        (`intake`); `verified`: the sender proved its key (the refusal is a replay, too old, over the rate)."""
        cmd, key = request.get("cmd"), request.get("key")
        cmd, key = (cmd if isinstance(cmd, str) else None), (key if isinstance(key, str) else None)
        seen = self.intake.refused(time.monotonic(), reason, key, verified=verified)
        if seen.in_full:
            log.warning("mqtt-refused", reason=reason, cmd=cmd, key=key)
            self.g.record({"kind": "remote-refused", "reason": reason, "cmd": cmd, "key": key})
        return {"id": rid, "site": self.site, "ok": False, "error": reason} if seen.reply else None

    def _save_issued(self) -> None:
        # On disk before the command runs: a restart must not reopen a replay.
        self.state.replace(ISSUED_FILE, self.last_issued)
        self.issued_unsaved = False
        self.issued_saved_at = time.monotonic()


def _rate_limited(key: str, wait: float) -> str:
    return (
        f'rate limited: key "{key}" may run {COMMAND_RATE.burst:g} commands at once, then '
        f"{COMMAND_RATE.per_s:g} per second; try again in {wait:.1f}s"
    )


def _steer_before_connect(client: aiomqtt.Client, uplink: UplinkSpec) -> None:
    """Make the session's TCP socket leave by `uplink` from its first packet, as a probe of it does:
    carrying its mark, and an IPv6 one bound to its device as well (`probe_device` says why the mark
    alone does not hold an IPv6 route to the uplink). A link-local broker is reached in the uplink's
    zone.

    Both must be set before connect(): the route is chosen then, and aiomqtt's socket_options are
    applied only after. paho creates the socket in `_create_socket_connection` (paho-mqtt 2.x, pinned
    through aiomqtt < 3); this replaces it on this one client.
    """
    paho = client._client

    def connect() -> socket.socket:
        host, port, timeout = paho._host, paho._port, paho._connect_timeout
        error: OSError = OSError(f"no address for {host}")
        found = socket.getaddrinfo(_zoned(host, uplink), port, type=socket.SOCK_STREAM)
        for family, kind, proto, _, address in found:
            try:
                sock = marked_socket(family, kind, proto, uplink.fwmark, probe_device(family, uplink.interface))
            except OSError as exc:  # the uplink's device is gone (a modem detached): try the next address
                error = exc
                continue
            try:
                sock.settimeout(timeout)  # paho connects blocking, in aiomqtt's executor thread
                sock.connect(address)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            return sock
        raise error

    paho._create_socket_connection = connect  # type: ignore[method-assign]


def _zoned(host: str, uplink: UplinkSpec) -> str:
    """A link-local broker address in the uplink's zone; a name or any other address as it is."""
    try:
        ip_address(host)
    except ValueError:
        return host
    return zoned(host, uplink.interface)
