"""The local control socket: JSON lines over a unix stream socket, mode and group from the policy.

Whoever may connect may read (status, history, explain, clock); commands that change what the
gateway does (the table's `mutating` ones) are taken only from root, the daemon's own user, and
members of `control.socket_group`, as the kernel tells them (SO_PEERCRED), so a socket opened to a
monitoring group for reading is not also a way to move 112 traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import json
import os
import platform
import pwd
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from failoverd.control.api import Gateway
from failoverd.control.commands import COMMANDS, BadRequest, decode_request, dispatch
from failoverd.observe.logging import get as get_logger
from failoverd.policy.model import ControlSpec, Policy
from failoverd.services.base import Applied, NeedsRestart, Reconfigured

log = get_logger("failoverd.control")
MAX_REQUEST = 64 * 1024
# Each connection holds a descriptor for as long as its peer likes. Without a bound, a user who may
# only read could open a thousand idle ones and leave the daemon none for its probes, its time
# queries and the commands a failover runs (at systemd's default soft limit of 1024 that ended the
# daemon). So a user other than root holds at most PER_USER at once, and all of them OTHERS_AT_ONCE;
# root always gets in (it owns the kernel's routes anyway), so an operator is never locked out.
PER_USER = 8
OTHERS_AT_ONCE = 64
BUSY_SAID_EVERY = 10.0  # seconds: a refused connection is logged at most this often
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_GID = struct.Struct("I")  # gid_t


def peergroups_option(machine: str) -> int | None:
    """SO_PEERGROUPS (Linux 4.13) on this machine, for Pythons before 3.13, which do not name it.

    Its number is the generic one everywhere but on parisc and sparc (asm/socket.h); on a machine not
    known here, None: a wrong number would read some other option, so the groups come from /proc."""
    if machine.startswith("parisc"):
        return 0x4034
    if machine.startswith("sparc"):
        return 0x3D
    generic = ("x86_64", "i386", "i486", "i586", "i686", "aarch64", "arm", "riscv", "ppc", "s390", "loongarch", "mips")
    return 59 if machine.startswith(generic) else None


SO_PEERGROUPS: int | None = getattr(socket, "SO_PEERGROUPS", None) or peergroups_option(platform.machine())


@dataclass(frozen=True, slots=True)
class Peer:
    """A client of the socket as the kernel names it (SO_PEERCRED)."""

    pid: int
    uid: int
    user: str


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def peer_groups(sock: socket.socket, gid: int, pid: int = 0, option: int | None = SO_PEERGROUPS) -> set[int]:
    """The peer's primary and supplementary groups, as the kernel recorded them at connect (SO_PEERGROUPS).

    Not from /proc/PID/status unless the option's number is unknown here: the unit hides other users'
    processes (ProtectProc=invisible), and a pid may be reused by the time it is read."""
    groups = {gid}
    if option is None:
        return groups | _proc_groups(pid)
    for size in (_GID.size * 64, _GID.size * 65536):  # NGROUPS_MAX is 65536; most peers have a few
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, option, size)
        except OSError as exc:
            if exc.errno == errno.ERANGE:
                continue
            log.warning("control-peer-groups", error=str(exc))
            return groups
        return groups | {g for (g,) in _GID.iter_unpack(raw)}
    return groups


def _proc_groups(pid: int) -> set[int]:
    """The supplementary groups /proc shows for pid; none when it is hidden or gone (logged)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError) as exc:
        log.warning("control-peer-groups", error=str(exc), pid=pid)
    return set()


def may_change(spec: ControlSpec, uid: int, groups: set[int]) -> bool:
    """Whether a peer may send mutating commands: root, the daemon's user, or the socket's group."""
    if uid in (0, os.getuid()):
        return True
    if spec.socket_group is None:
        return False
    try:
        return grp.getgrnam(spec.socket_group).gr_gid in groups
    except KeyError:
        return False


class ControlSocket:
    name: ClassVar[str] = "control"

    def __init__(self, gateway: Gateway, path: str | None = None) -> None:
        self.gateway = gateway
        self.spec = gateway.policy.control
        self.path = Path(path or self.spec.socket)  # --socket wins over the policy's
        self.given = path is not None
        self.clients = 0
        self.held: Counter[int] = Counter()  # connections open per uid (root's are not counted)
        self.busy_said = -BUSY_SAID_EVERY
        self.busy_refused = 0

    async def run(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a killed run
        server = await asyncio.start_unix_server(self._client, path=str(self.path), limit=MAX_REQUEST)
        self._permissions(self.spec)
        log.info("control", socket=str(self.path))
        async with server:
            await server.serve_forever()

    async def reconfigure(self, policy: Policy) -> Reconfigured:
        new = policy.control
        if (new.socket_mode, new.socket_group) != (self.spec.socket_mode, self.spec.socket_group):
            self._permissions(new)  # for clients that connect from now on
        self.spec = new
        if not self.given and new.socket != str(self.path):
            return NeedsRestart(f"the socket moves to {new.socket}: it listens on {self.path} until a restart")
        return Applied()

    def status(self) -> dict[str, Any]:
        return {"socket": str(self.path), "clients": self.clients}

    def _permissions(self, spec: ControlSpec) -> None:
        try:
            self.path.chmod(spec.socket_mode)
            if spec.socket_group:
                os.chown(self.path, -1, grp.getgrnam(spec.socket_group).gr_gid)
        except KeyError:
            log.warning("control-group-missing", group=spec.socket_group, socket=str(self.path))
        except OSError as exc:  # the socket removed by hand: it still serves who is connected
            log.warning("control-permissions", socket=str(self.path), error=str(exc))

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio runs each connection as its own task, outside the daemon's TaskGroup: nothing may
        # escape from here unlogged. What a peer may do is judged once, when it connects.
        self.clients += 1
        counted: int | None = None  # the uid this connection is counted against, once admitted
        try:
            sock = writer.get_extra_info("socket")
            pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            busy = self._busy(uid)
            if busy:
                writer.write(json.dumps({"ok": False, "error": busy}).encode() + b"\n")
                await writer.drain()
                return
            if uid != 0:
                counted = uid
                self.held[uid] += 1
            writable = may_change(self.spec, uid, peer_groups(sock, gid, pid))
            peer = Peer(pid, uid, user_name(uid))
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # asyncio's word for a line beyond the reader's limit
                    too_long = f"a request is one line of JSON of at most {MAX_REQUEST} bytes"
                    writer.write(json.dumps({"ok": False, "error": too_long}).encode() + b"\n")
                    await writer.drain()
                    break  # the rest of that line is still to come: nothing more is read from this peer
                if not line:
                    break
                reply = await self.answer(line, writable, peer)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        except Exception:
            log.exception("control-client-failed")
        finally:
            self.clients -= 1
            if counted is not None:
                self.held[counted] -= 1
                if self.held[counted] <= 0:
                    del self.held[counted]
            writer.close()

    def _busy(self, uid: int) -> str:
        """Why a new connection of `uid` is turned away ("" if it is admitted)."""
        if uid == 0:
            return ""
        if self.held[uid] >= PER_USER:
            why = f"too many connections from {user_name(uid)} ({PER_USER} at once); close one and retry"
        elif self.held.total() >= OTHERS_AT_ONCE:
            why = f"the control socket is busy ({OTHERS_AT_ONCE} connections); retry"
        else:
            return ""
        self.busy_refused += 1
        now = time.monotonic()
        if now - self.busy_said >= BUSY_SAID_EVERY:
            log.warning("control-busy", refused=self.busy_refused, why=why, user=user_name(uid))
            self.busy_said, self.busy_refused = now, 0
        return why

    async def answer(self, line: bytes, writable: bool, peer: Peer | None = None) -> dict[str, Any]:
        """The reply to one request line; commands that change state are logged with their outcome.

        Who asked is what the kernel says of the peer, not what the request claims: an override's `by`
        reads `local:alice/failoverctl:alice` (the claim after the slash, as failoverctl fills it in)."""
        try:
            request = decode_request(line)
        except BadRequest as exc:
            return {"ok": False, "error": str(exc)}
        name = request.get("cmd") if isinstance(request, dict) else None
        cmd = COMMANDS.get(name) if isinstance(name, str) else None
        if isinstance(request, dict) and peer is not None and cmd is not None and cmd.arg("by") is not None:
            claim = request.get("by")
            request = {
                **request,
                "by": f"local:{peer.user}" + (f"/{claim}" if isinstance(claim, str) and claim else ""),
            }
        reply = await dispatch(self.gateway, request, may_change=writable)
        if cmd is None or cmd.mutating:
            who = None if peer is None else {"user": peer.user, "uid": peer.uid, "pid": peer.pid}
            log.info(
                "command", request=request, peer=who, ok=reply.get("ok"), reply=reply.get("text") or reply.get("error")
            )
        return reply
