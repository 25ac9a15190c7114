"""What one metrics scrape reads: the engine's frozen state and the counters the services keep, taken at one instant."""

# Apart from observe/metrics.py so that the daemon imports prometheus_client only once an endpoint is
# configured (the import costs ~0.1 s at start on a fast machine, more on a gateway's CPU).

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from failoverd.engine.state import EngineState
from failoverd.observe.latency import Histogram
from failoverd.policy.model import Policy

# The text format generate_latest writes (prometheus_client's CONTENT_TYPE_PLAIN_0_0_4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class ProbeCount:
    done: int  # probes completed (answered or lost)
    lost: int


@dataclass(frozen=True, slots=True)
class EngineCounters:
    """What the engine service counts in place, copied at the scrape."""

    steps: int = 0
    queued: int = 0
    last_step: float = 0.0  # monotonic
    step_time: Histogram = field(default_factory=Histogram)
    effect_latency: Histogram = field(default_factory=Histogram)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one scrape reports, taken at one instant on the event loop."""

    policy: Policy
    state: EngineState
    mono: float  # the monotonic clock at the scrape: ages are measured to it
    probes: Mapping[tuple[str, str], ProbeCount] = field(default_factory=dict)  # by (uplink, probe)
    switches: Mapping[str, int] = field(default_factory=dict)  # by class
    engine: EngineCounters = field(default_factory=EngineCounters)
