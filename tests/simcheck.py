"""`failoverd simulate` detects a fault when the daemon does: fiber-cut and silent-blackhole, in the lab and replayed.

Theory of the comparison. The daemon's probes go out on a grid of each interval of the monotonic
clock (probes/schedule.py), and so do the simulator's, so both detect a fault at `F` at `F + d`, where
the delay `d` depends only on where `F` falls within a probe interval (its phase). The lab cannot
choose that phase, and a daemon whose loop once fell a round behind carries on from another one, so
the simulator replays the fault at every phase across one interval of the faulted uplink's probes:
that gives the range [d_min, d_max] a gateway can show. The lab's fault happens at an unknown moment
between the start and the end of the command that injects it, and the daemon stamps a detection with
the clock of the engine step that makes it, a little after the event. So the daemon must detect
between `start + d_min - IN_FLIGHT` and `end + d_max + SLACK`.

The scenario tests (tests/integration/test_scenarios.py) run CHECKED with a TimedRun and call
`daemon_detects_as_simulated` on it: one run of the lab serves both checks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from failoverd.policy.model import Policy
from failoverd.simulate import Simulation, Timeline
from lab import scenario as sc

# The daemon stamps a detection with the clock of the engine step that makes it: after its round's
# timer fires (or, for a carrier loss, after the netlink notice is read) and the results cross its
# queue. On the lab that is a millisecond or two; half a fiber probe interval leaves room for a busy
# machine, and is still well under the whole interval a wrong schedule would be off by.
SLACK = 0.025
# A probe sent just before the ISP starts dropping is lost if its answer crosses the ISP after, so a
# blackhole can show as if it began up to one round-trip earlier. The lab's fiber path adds no
# delay (its probes answer in about a millisecond); 20 ms also covers a slow echo responder.
IN_FLIGHT = 0.02
CHECKED = frozenset({"fiber-cut", "silent-blackhole"})  # scenarios whose detection times are compared
PHASES = 25  # fault times replayed across one probe interval
FAULT_AT = 10.0  # s into the simulation: the engine has settled, and every grid of lab.yaml has a tick here


@dataclass
class TimedRun(sc.Run):
    """A scenario run that also keeps the daemon's history and when each step's command began and ended."""

    applied: list[tuple[sc.Step, float, float]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, step: sc.Step) -> None:
        began = time.monotonic()
        super().apply(step)
        self.applied.append((step, began, time.monotonic()))

    def report(
        self, traffic: dict[str, Any], final: dict[str, Any], history: list[dict[str, Any]], observer: sc.Observer
    ) -> dict[str, Any]:
        self.history = history
        return super().report(traffic, final, history, observer)


def detections(records: list[dict[str, Any]], uplink: str, since: float) -> dict[str, float]:
    """From history records (the daemon's or the simulator's: one shape), when at or after `since` the
    uplink went DOWN and the critical class left it."""
    down = [r["mono"] for r in records if r["kind"] == "uplink" and r["uplink"] == uplink and r["to"] == "DOWN"]
    moves = [r for r in records if r["kind"] == "decision" and r["class"] == "critical"]
    left = [r["mono"] for r in moves if r.get("from") == uplink]
    found = {"down": [t for t in down if t >= since], "critical-switched": [t for t in left if t >= since]}
    missing = [what for what, times in found.items() if not times]
    assert not missing, f"no {', '.join(missing)} for {uplink} after {since:.3f} in {records}"
    return {what: min(times) for what, times in found.items()}


def health_before(records: list[dict[str, Any]], uplink: str, t: float) -> str | None:
    states = [r["to"] for r in records if r["kind"] == "uplink" and r["uplink"] == uplink and r["mono"] < t]
    return states[-1] if states else None


def fault_step(step: sc.Step) -> dict[str, Any]:
    """The simulator's timeline step for a lab fault."""
    match step.do:
        case "carrier":
            return {"uplink": step.uplink, "carrier": "up" if step.up else "down"}
        case "blackhole":
            return {"uplink": step.uplink, "loss": 100 if step.on else 0}
    raise AssertionError(f"no simulated counterpart for the lab step {step.do!r}")


def simulated_delays(policy: Policy, step: sc.Step) -> dict[str, tuple[float, float]]:
    """The least and greatest detection delays the simulator finds, over the fault's phase in a probe interval."""
    assert step.uplink is not None
    interval = max(p.interval for p in policy.uplinks[step.uplink].probes)
    delays: dict[str, list[float]] = {}
    for k in range(PHASES):
        at = FAULT_AT + interval * k / PHASES
        timeline = Timeline.model_validate(
            {
                "duration": at + 5,
                # The lab's terrestrial links add no delay.
                "world": {name: {"rtt_ms": 1} for name, u in policy.uplinks.items() if not u.standby.cold},
                "events": [{"at": at, **fault_step(step)}],
            }
        )
        records = Simulation(policy, timeline).run()
        assert health_before(records, step.uplink, at) == "UP"
        for what, t in detections(records, step.uplink, at).items():
            delays.setdefault(what, []).append(t - at)
    return {what: (min(ds), max(ds)) for what, ds in delays.items()}


def daemon_detects_as_simulated(name: str, run: TimedRun, policy: Policy) -> None:
    """The daemon's detection of the run's first step (the fault) falls within what the simulator finds."""
    step, began, ended = run.applied[0]  # the fault; later steps repair it
    assert step.uplink is not None
    assert run.history, f"{name}: no history from the daemon at the end (did it die?)"
    assert health_before(run.history, step.uplink, began) == "UP", "the uplink was not UP before the fault"
    measured = detections(run.history, step.uplink, began)
    expected = simulated_delays(policy, step)
    in_flight = IN_FLIGHT if step.do == "blackhole" else 0.0
    for what, t in measured.items():
        d_min, d_max = expected[what]
        lo, hi = began + d_min - in_flight, ended + d_max + SLACK
        assert lo <= t <= hi, (
            f"{name}: {what} {(t - began) * 1000:.1f} ms after the fault's command began "
            f"({(ended - began) * 1000:.1f} ms long); the simulator says {d_min * 1000:.1f}..{d_max * 1000:.1f} ms "
            f"(in flight {in_flight * 1000:g} ms, slack {SLACK * 1000:g} ms)"
        )
