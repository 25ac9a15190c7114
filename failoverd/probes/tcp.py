"""TCP connect probes: a completed handshake (or a RST: the host answered) proves the path."""

from __future__ import annotations

import asyncio
import socket
import time

from failoverd.policy.model import ProbeSpec, UplinkSpec
from failoverd.probes.base import ProbeOutcome, family_of, marked_socket


class TcpSession:
    def __init__(self, spec: ProbeSpec, uplink: UplinkSpec) -> None:
        self.spec = spec
        self.mark = uplink.fwmark

    async def probe(self) -> ProbeOutcome:
        loop = asyncio.get_running_loop()
        sock = marked_socket(family_of(self.spec.target), socket.SOCK_STREAM, 0, self.mark)
        start = time.monotonic()
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (self.spec.target, self.spec.port or 80)), self.spec.timeout)
        except TimeoutError:
            return ProbeOutcome(False, None, "timeout")
        except ConnectionRefusedError:
            return ProbeOutcome(True, time.monotonic() - start, "refused (host answered)")
        except OSError as exc:
            return ProbeOutcome(False, None, exc.strerror or str(exc))
        finally:
            sock.close()
        return ProbeOutcome(True, time.monotonic() - start)

    def close(self) -> None:
        pass
