"""Engine cost: how many events per second the pure engine steps through, on a realistic load.

`python -m bench engine [--seconds 10]`: the lab policy's probes (every uplink and target at its
interval, all answering) replayed through step() as fast as it goes; prints events/s and µs/event.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from failoverd.engine import events as ev
from failoverd.engine.state import initial_state
from failoverd.engine.step import step
from failoverd.policy import load_policy
from failoverd.services.probes import ANSWERS_HELD

ROOT = Path(__file__).resolve().parent.parent


def measure(policy_path: Path, simulated: float) -> dict[str, Any]:
    policy = load_policy(policy_path)
    schedule = sorted(
        (k * p.interval, name, p.key)
        for name, u in policy.uplinks.items()
        if not u.standby.cold
        for j, p in enumerate(u.probes)
        for k in range(int(simulated / p.interval))
    )
    state, _ = step(initial_state(policy, 0.0), ev.Tick(), policy, 0.0)
    start = time.perf_counter()
    for t, uplink, key in schedule:
        state, _ = step(state, ev.ProbeResult(uplink, key, True, 0.01), policy, t)
    elapsed = time.perf_counter() - start
    # As the daemon feeds it: probes on a grid of their interval, the answers of one instant in one step.
    batches: dict[float, list[ev.ProbeResult]] = {}
    for t, uplink, key in schedule:
        batches.setdefault(round(t, 2), []).append(ev.ProbeResult(uplink, key, True, 0.01))
    state, _ = step(initial_state(policy, 0.0), ev.Tick(), policy, 0.0)
    start = time.perf_counter()
    for t, results in sorted(batches.items()):
        state, _ = step(state, ev.ProbeBatch(tuple(results)), policy, t)
    batched = time.perf_counter() - start
    # As the daemon feeds it now: answers held up to ANSWERS_HELD, then one step for all of them.
    held: dict[int, list[ev.ProbeResult]] = {}
    for t, uplink, key in schedule:
        held.setdefault(int(t / ANSWERS_HELD), []).append(ev.ProbeResult(uplink, key, True, 0.01, t))
    state, _ = step(initial_state(policy, 0.0), ev.Tick(), policy, 0.0)
    start = time.perf_counter()
    for k, results in sorted(held.items()):
        state, _ = step(state, ev.ProbeBatch(tuple(results)), policy, (k + 1) * ANSWERS_HELD)
    held_elapsed = time.perf_counter() - start
    return {
        "policy": str(policy_path.relative_to(ROOT)),
        "events": len(schedule),
        "simulated_s": simulated,
        "events_per_s": round(len(schedule) / elapsed),
        "us_per_event": round(elapsed / len(schedule) * 1e6, 1),
        "probe_events_per_s_of_policy": round(len(schedule) / simulated),
        "batched_us_per_probe": round(batched / len(schedule) * 1e6, 1),
        "batches_per_s_of_policy": round(len(batches) / simulated),
        "held_s": ANSWERS_HELD,
        "held_us_per_probe": round(held_elapsed / len(schedule) * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench engine", description=__doc__)
    ap.add_argument("--policy", type=Path, default=ROOT / "policies" / "lab.yaml")
    ap.add_argument("--seconds", type=float, default=60.0, help="simulated seconds of probing")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    r = measure(args.policy.resolve(), args.seconds)
    print(
        f"{r['events']} probe events ({r['probe_events_per_s_of_policy']}/s in the policy): "
        f"{r['events_per_s']} events/s, {r['us_per_event']} µs/event; in batches of one instant "
        f"({r['batches_per_s_of_policy']}/s): {r['batched_us_per_probe']} µs/probe; answers held "
        f"{r['held_s'] * 1000:.0f} ms as the daemon does: {r['held_us_per_probe']} µs/probe"
    )
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    return 0
