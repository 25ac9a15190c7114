"""Scoped conntrack flushes: forget one class's flows, never the whole table (a peer's classic fault)."""

from __future__ import annotations

import asyncio

# The family is always named (-f): conntrack(8) gives IPv4 as the default of -L, while conntrack 1.4.7's
# -D without -f deletes both; a class of one family must forget flows of that family only, on any version.
FAMILY_NAMES = {4: "ipv4", 6: "ipv6"}


async def flush_mark(mark: int, mask: int, family: int = 4) -> tuple[bool, str]:
    """Delete the conntrack entries of `family` whose mark (under `mask`) is `mark`; (ok, what happened)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "conntrack",
            "-D",
            "-f",
            FAMILY_NAMES[family],
            "-m",
            f"{mark:#x}/{mask:#x}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        return False, "conntrack is not installed (Debian package conntrack)"
    _, err = await proc.communicate()
    text = err.decode().strip()
    # conntrack exits 1 when nothing matched; that is success for us.
    if proc.returncode == 0 or "0 flow entries" in text:
        return True, text.splitlines()[-1] if text else "flushed"
    return False, text or f"exit status {proc.returncode}"


async def flush_families(mark: int, mask: int, families: tuple[int, ...]) -> tuple[bool, str]:
    """flush_mark for each family a class carries: ok if every one was; what happened, per family."""
    results = [(f, *await flush_mark(mark, mask, f)) for f in families]
    ok = all(r[1] for r in results)
    if len(results) == 1:
        return ok, results[0][2]
    return ok, "; ".join(f"{FAMILY_NAMES[f]}: {text}" for f, _, text in results)
