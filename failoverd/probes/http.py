"""HTTP(S) GET probes: the status line must be the expected one.

Certificates are not verified: the probe asks whether the path carries traffic to the server, and a
wrong wall clock (which the clock checker reports on its own) must not make every HTTPS probe fail.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from urllib.parse import urlsplit

from failoverd.policy.model import ProbeSpec, UplinkSpec
from failoverd.probes.base import ProbeOutcome, family_of, marked_socket, probe_device


class HttpSession:
    def __init__(self, spec: ProbeSpec, uplink: UplinkSpec) -> None:
        self.spec = spec
        self.mark = uplink.fwmark
        self.interface = uplink.interface
        # A dual-stack uplink's twins (policy/compile.py) each judge one family: a name is resolved in it.
        self.family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(uplink.family or 0, socket.AF_UNSPEC)
        url = urlsplit(spec.target)
        self.tls = url.scheme == "https"
        self.host = url.hostname or ""  # an IPv6 literal without its brackets, as getaddrinfo takes it
        self.port = url.port or (443 if self.tls else 80)
        # RFC 9110 section 7.2: the Host field as the URL writes the authority, brackets and all.
        self.authority = url.netloc.rpartition("@")[2]
        self.path = (url.path or "/") + (f"?{url.query}" if url.query else "")

    async def probe(self) -> ProbeOutcome:
        start = time.monotonic()
        try:
            return await asyncio.wait_for(self._get(start), self.spec.timeout)
        except TimeoutError:
            return ProbeOutcome(False, None, "timeout")
        except (OSError, ssl.SSLError, ValueError) as exc:
            return ProbeOutcome(False, None, str(exc))

    async def _get(self, start: float) -> ProbeOutcome:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, self.port, family=self.family, type=socket.SOCK_STREAM)
        address = str(infos[0][4][0])
        family = family_of(address)
        sock = marked_socket(family, socket.SOCK_STREAM, 0, self.mark, probe_device(family, self.interface))
        try:
            await loop.sock_connect(sock, (address, self.port))
        except BaseException:
            sock.close()
            raise
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname=self.host if ctx else None)
        try:
            writer.write(
                f"GET {self.path} HTTP/1.1\r\nHost: {self.authority}\r\nUser-Agent: failoverd-probe\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
        finally:
            writer.close()
        parts = line.decode("latin-1").split()
        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
        if status != (self.spec.expect_status or 200):
            return ProbeOutcome(False, None, f"HTTP status {status}")
        return ProbeOutcome(True, time.monotonic() - start)

    def close(self) -> None:
        pass
