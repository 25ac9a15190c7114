"""The floor for failoverd's CPU: its probe sessions alone, at a policy's rate, with no engine, kernel or control.

`python -m bench.prober POLICY SECONDS` (run inside the gateway's namespace by bench/cost.py) sends
every warm probe of the policy on its interval with the daemon's round driver, counts the outcomes, and prints
its own CPU use as JSON. What the daemon uses beyond this is the price of deciding and reporting.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from pathlib import Path

from failoverd.policy import load_policy
from failoverd.probes.base import DatagramSession, ProbeOutcome
from failoverd.probes.kinds import open_session
from failoverd.probes.rounds import Rounds


async def measure(policy: Path, seconds: float) -> dict[str, float]:
    pol = load_policy(policy)
    done = [0]
    by_interval: dict[float, list[tuple[str, DatagramSession]]] = {}
    for u in pol.uplinks.values():
        if u.standby.cold:
            continue
        for spec in u.probes:
            session = open_session(spec, u)
            if not isinstance(session, DatagramSession):
                raise SystemExit(f"{spec.key}: the floor measures datagram probes only")
            by_interval.setdefault(spec.interval, []).append((spec.key, session))

    def count(results: list[tuple[str, ProbeOutcome]]) -> None:
        done[0] += len(results)

    tasks = [asyncio.create_task(Rounds(i, s, deliver=count).run()) for i, s in by_interval.items()]
    await asyncio.sleep(3)  # past the first timeouts
    r0, n0, t0 = resource.getrusage(resource.RUSAGE_SELF), done[0], time.monotonic()
    await asyncio.sleep(seconds)
    r1, n1, t1 = resource.getrusage(resource.RUSAGE_SELF), done[0], time.monotonic()
    for t in tasks:
        t.cancel()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {
        "cpu_percent": round(cpu / (t1 - t0) * 100, 2),
        "probes_per_s": round((n1 - n0) / (t1 - t0), 1),
        "preempted_per_s": round((r1.ru_nivcsw - r0.ru_nivcsw) / (t1 - t0), 1),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure(Path(sys.argv[1]), float(sys.argv[2])))))
