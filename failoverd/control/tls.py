"""The TLS context and socket options of an MQTT session, the same for the daemon and failoverctl."""

from __future__ import annotations

import socket
import ssl

# Nagle off: an MQTT exchange is small packets that each wait for an answer. With Nagle on, a gateway's
# reply, written right after its acknowledgement of the command, waited for the broker's delayed ACK of
# that acknowledgement (up to 40 ms on Linux). Found with bench/fleet.py at 20 gateways (runs not
# kept): every reply came about 50 ms after the command with Nagle on, 20-30 ms with it off.
SOCKET_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


def client_context(ca_file: str | None, cert_file: str | None = None, key_file: str | None = None) -> ssl.SSLContext:
    """Verify the broker against `ca_file` (the system's CAs if None) and its name; present the client
    certificate `cert_file` (key in `key_file`, or in `cert_file` itself) when given.

    Raises OSError or ssl.SSLError, naming the file, when a file cannot be read or does not fit.
    """
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as exc:  # its message alone ("[SSL] PEM lib") does not say which file
            raise ssl.SSLError(f"client certificate {cert_file} (key {key_file or cert_file}): {exc}") from exc
    elif key_file is not None:
        raise ValueError("a client certificate key without the certificate (cert_file)")
    return context
