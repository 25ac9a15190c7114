"""Packet classification in nftables: each class's selectors set its mark (packet and conntrack).

failoverd owns one table, `inet failoverd`, and replaces it whole and atomically (`nft -f`), so a
half-applied ruleset can never exist. ip rules cannot match DSCP and refuse port ranges ending at
65535; nftables matches both, so every selector is expressed here and ip rules match marks only.

A class of one family (policy/compile.py splits a dual-stack class into CLASS and CLASS/v6) marks
packets of that family only: its table holds routes of that family only, and a packet of the other
would find no route there and fall through to the main table, round failoverd's decision.
"""

from __future__ import annotations

import asyncio
from ipaddress import ip_network

from failoverd.policy.model import Family, MatchSpec, Policy

TABLE = "failoverd"
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}
NFPROTO = {4: "ipv4", 6: "ipv6"}


class NftError(Exception):
    pass


def _match_exprs(m: MatchSpec, mask: int, family: Family | None = None) -> list[str]:
    """One selector → nft match expressions, one list per address family it needs (`family`: the
    class's one family, or None for both)."""
    families: set[int] = {ip_network(p).version for p in (*m.src, *m.dst)}
    prefixed = bool(families)
    if not families:
        # `ip dscp` matches IPv4 only, `ip6 dscp` IPv6 only: a DSCP selector needs both; others neither.
        families = {4, 6} if m.dscp else {0}
        if family is not None:
            families = {family}
    rules: list[str] = []
    for fam in sorted(families):
        ip = {4: "ip", 6: "ip6", 0: ""}[fam]
        parts: list[str] = []
        if not prefixed and not m.dscp and family is not None:
            parts.append(f"meta nfproto {NFPROTO[family]}")  # `ip saddr`, `ip6 dscp` say it already
        if m.iif:
            parts.append(f'iifname "{m.iif}"')
        if m.src:
            parts.append(f"{ip} saddr {{ {', '.join(m.src)} }}")
        if m.dst:
            parts.append(f"{ip} daddr {{ {', '.join(m.dst)} }}")
        if m.protocol is not None:
            parts.append(f"meta l4proto {PROTO_NAMES.get(m.protocol, str(m.protocol))}")
        for key, rng in (("sport", m.sport), ("dport", m.dport)):
            if rng is not None:
                parts.append(f"th {key} {rng[0]}" + (f"-{rng[1]}" if rng[1] != rng[0] else ""))
        if m.dscp:
            parts.append(f"{ip} dscp {{ {', '.join(str(d) for d in m.dscp)} }}")
        if m.fwmark is not None:
            parts.append(f"meta mark and {~mask & 0xFFFFFFFF:#x} == {m.fwmark:#x}")
        rules.append(" ".join(parts))
    return rules


def render(policy: Policy) -> str:
    mask = policy.ownership.fwmark_mask
    keep = ~mask & 0xFFFFFFFF
    body: list[str] = []
    for c in policy.classes.values():
        action = (
            f"meta mark set meta mark and {keep:#x} or {c.fwmark:#x} "
            f"ct mark set ct mark and {keep:#x} or {c.fwmark:#x} return"
        )
        comment = f'comment "class {c.name}"'
        if not c.matches:
            only = f"meta nfproto {NFPROTO[c.family]} " if c.family is not None else ""
            body.append(f"{only}{action} {comment}")
            continue
        for m in c.matches:
            body += [f"{expr} {action} {comment}" for expr in _match_exprs(m, mask, c.family)]
    # Traffic that already carries a failoverd mark (probes and control traffic sent with SO_MARK on
    # their uplink) is steered already: classification must not overwrite it. Replies belong to the
    # flow their original direction classified; marking them would put the gateway's own probe flows
    # into a class, and a scoped conntrack flush would then hit them.
    guard = f"meta mark and {mask:#x} != 0 return\n    ct direction reply return"
    lines = [
        f"table inet {TABLE} {{",
        "  chain classify_forward {",
        "    type filter hook prerouting priority mangle; policy accept;",
        f"    {guard}",
        *(f"    {b}" for b in body),
        "  }",
        "  chain classify_local {",
        "    type route hook output priority mangle; policy accept;",
        f"    {guard}",
        *(f"    {b}" for b in body),
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


async def load(ruleset: str) -> None:
    """Replace failoverd's table by `ruleset` (nft.render's text) atomically: create-if-missing, delete,
    define, in one transaction."""
    await _nft(f"table inet {TABLE}\ndelete table inet {TABLE}\n{ruleset}")


async def remove() -> None:
    await _nft(f"table inet {TABLE}\ndelete table inet {TABLE}\n")


async def _nft(text: str) -> None:
    try:
        proc = await asyncio.create_subprocess_exec(
            "nft",
            "-f",
            "-",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise NftError("nft is not installed (Debian package nftables)") from exc
    _, err = await proc.communicate(text.encode())
    if proc.returncode != 0:
        raise NftError(f"nft refused the ruleset: {err.decode().strip()}")
