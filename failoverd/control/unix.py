"""The local control socket: JSON lines over a unix stream socket, mode and group from the policy."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from failoverd.control.commands import dispatch
from failoverd.observe.logging import get as get_logger

if TYPE_CHECKING:
    from failoverd.runtime import Daemon

log = get_logger("failoverd.control")
MAX_REQUEST = 64 * 1024


async def serve(d: Daemon, path: str) -> None:
    sock = Path(path)
    sock.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()  # a stale socket from a killed run

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                except json.JSONDecodeError as exc:
                    reply = {"ok": False, "error": f"not JSON: {exc.msg} at column {exc.colno}"}
                else:
                    reply = await dispatch(d, request)
                    if isinstance(request, dict) and request.get("cmd") not in (
                        "status",
                        "history",
                        "explain",
                        "clock",
                    ):
                        log.info(
                            "command",
                            request=request,
                            ok=reply.get("ok"),
                            reply=reply.get("text") or reply.get("error"),
                        )
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(client, path=str(sock), limit=MAX_REQUEST)
    sock.chmod(d.policy.control.socket_mode)
    if d.policy.control.socket_group:
        try:
            os.chown(sock, -1, grp.getgrnam(d.policy.control.socket_group).gr_gid)
        except KeyError:
            log.warning("control-group-missing", group=d.policy.control.socket_group, socket=str(sock))
    log.info("control", socket=str(sock))
    async with server:
        await server.serve_forever()
