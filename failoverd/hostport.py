"""HOST[:PORT] as operators write it: a name, an IPv4 address, an IPv6 one bare or in brackets."""

from __future__ import annotations

import re
from ipaddress import IPv6Address, ip_address

_BRACKETED = re.compile(r"\[([^\[\]]+)\](?::(\d{1,5}))?")


def _ipv6(text: str) -> bool:
    try:
        return isinstance(ip_address(text), IPv6Address)  # with a zone too: fe80::1%fiber0
    except ValueError:
        return False


def split_hostport(text: str, default_port: int) -> tuple[str, int]:
    """`broker`, `broker:1884`, `192.0.2.10:1884`, `2001:db8::10`, `[2001:db8::10]`,
    `[2001:db8::10]:1884` or `[fe80::1%fiber0]:1884` as (host, port); the host without brackets.

    An IPv6 address with a port must be in brackets (RFC 3986 section 3.2.2): in `2001:db8::10:1884`
    the last group could be either. Raises ValueError naming what is wrong.
    """
    text = text.strip()
    port = str(default_port)
    if text.startswith("["):
        mt = _BRACKETED.fullmatch(text)
        if mt is None or not _ipv6(mt.group(1)):
            raise ValueError(f"{text!r}: brackets hold an IPv6 address, a port may follow: [2001:db8::10]:1883")
        host, port = mt.group(1), mt.group(2) or port
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not port.isdigit():
            raise ValueError(f"{text!r}: {port!r} is not a port number")
    elif ":" in text:
        if not _ipv6(text):
            raise ValueError(f"{text!r} is not an IPv6 address: write one with a port as [2001:db8::10]:1883")
        host = text
    else:
        host = text
    if not host or any(c.isspace() or c in "[]/" for c in host):
        raise ValueError(f"{text!r}: no host, or one that is neither a name nor an address")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port {port} is not between 1 and 65535")
    return host, int(port)


def join_hostport(host: str, port: int) -> str:
    """HOST:PORT for a log line or a status, an IPv6 address in brackets so the port stands apart."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def unbracket(host: str) -> str:
    """A host as a connect() takes it: `[2001:db8::10]` without its brackets (a URL's habit, accepted
    where the policy takes a host); anything else as it is. ValueError if the brackets hold no IPv6 address."""
    if host.startswith("[") or host.endswith("]"):
        inner = host[1:-1] if host.startswith("[") and host.endswith("]") else ""
        if not _ipv6(inner):
            raise ValueError(f"{host!r}: brackets hold an IPv6 address, e.g. [2001:db8::10]")
        return inner
    return host
