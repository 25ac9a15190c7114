"""Running the policy's commands (cold-standby activation): argv, a deadline, and the outcome as text."""

from __future__ import annotations

import asyncio
import contextlib

from failoverd.policy.model import CommandSpec


async def run_command(cmd: CommandSpec) -> tuple[bool, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return False, f"{cmd.argv[0]}: {exc.strerror}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), cmd.timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return False, f"{' '.join(cmd.argv)}: no result within {cmd.timeout:g}s, killed"
    tail = out.decode(errors="replace").strip().splitlines()[-1:] if out else []
    if proc.returncode != 0:
        return False, f"exit status {proc.returncode}" + (f": {tail[0]}" if tail else "")
    return True, tail[0] if tail else "ok"
