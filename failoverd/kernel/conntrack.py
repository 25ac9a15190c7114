"""Scoped conntrack flushes: forget one class's flows, never the whole table (a peer's classic fault)."""

from __future__ import annotations

import asyncio


async def flush_mark(mark: int, mask: int) -> tuple[bool, str]:
    """Delete the conntrack entries whose mark (under `mask`) is `mark`; returns (ok, what happened)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "conntrack",
            "-D",
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
