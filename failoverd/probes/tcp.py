"""TCP connect probes: a completed handshake (or a RST: the host answered) proves the path."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

from failoverd.policy.model import ProbeSpec, UplinkSpec
from failoverd.probes.base import ProbeOutcome, family_of, marked_socket, probe_device

_ABORT = struct.pack("ii", 1, 0)  # struct linger: on, 0 s


class TcpSession:
    def __init__(self, spec: ProbeSpec, uplink: UplinkSpec) -> None:
        self.spec = spec
        self.mark = uplink.fwmark
        self.family = family_of(spec.target)
        self.device = probe_device(self.family, uplink.interface)

    async def probe(self) -> ProbeOutcome:
        loop = asyncio.get_running_loop()
        try:  # bound to a device that may be missing (a modem not attached yet): a loss, with the reason
            sock = marked_socket(self.family, socket.SOCK_STREAM, 0, self.mark, self.device)
        except OSError as exc:
            return ProbeOutcome(False, None, exc.strerror or str(exc))
        # Closed with a reset, not a FIN: no TIME_WAIT left behind (a minute of them per probe). A
        # TIME_WAIT socket answers a late FIN through an unbound socket of the kernel's, which routes an
        # IPv6 ACK by the main table (net/ipv6/tcp_ipv6.c): out of another uplink, the lab saw.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
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
