"""The floor for failoverd's CPU: its probe sessions alone, at a policy's rate, with no engine, kernel or control.

`python -m bench.prober POLICY SECONDS` (run inside the gateway's namespace by bench/cost.py) sends
every warm probe of the policy on its interval, as the daemon does, counts the answers, and prints
its own CPU use as JSON. What the daemon uses beyond this is the price of deciding and reporting.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import sys
import time
from pathlib import Path

from failoverd.policy import load_policy
from failoverd.policy.model import ProbeSpec, UplinkSpec
from failoverd.probes import open_session
from failoverd.probes.base import DatagramSession, ProbeOutcome


async def _probe(spec: ProbeSpec, uplink: UplinkSpec, done: list[int]) -> None:
    session = open_session(spec, uplink)
    if not isinstance(session, DatagramSession):
        raise SystemExit(f"{spec.key}: the floor measures datagram probes only")

    def count(_out: ProbeOutcome) -> None:
        done[0] += 1

    next_at = math.ceil(time.monotonic() / spec.interval) * spec.interval
    while True:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        session.send(count)
        next_at += spec.interval


async def measure(policy: Path, seconds: float) -> dict[str, float]:
    pol = load_policy(policy)
    done = [0]
    tasks = [
        asyncio.create_task(_probe(p, u, done)) for u in pol.uplinks.values() if not u.standby.cold for p in u.probes
    ]
    await asyncio.sleep(3)  # past the first timeouts
    r0, n0, t0 = resource.getrusage(resource.RUSAGE_SELF), done[0], time.monotonic()
    await asyncio.sleep(seconds)
    r1, n1, t1 = resource.getrusage(resource.RUSAGE_SELF), done[0], time.monotonic()
    for t in tasks:
        t.cancel()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"cpu_percent": round(cpu / (t1 - t0) * 100, 2), "probes_per_s": round((n1 - n0) / (t1 - t0), 1)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure(Path(sys.argv[1]), float(sys.argv[2])))))
