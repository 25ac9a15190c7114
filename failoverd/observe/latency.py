"""A fixed-bucket latency histogram the runtime fills in place and the metrics endpoint reads."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

# Seconds: a pure step takes tens of microseconds, a kernel write a millisecond or a few; beyond a
# second something waits that should not (a stuck netlink socket, a starved machine).
BUCKETS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(frozen=True, slots=True)
class Histogram:
    """A copy of a Latency as Prometheus reads it: cumulative buckets ("+Inf" last) and the sum."""

    buckets: tuple[tuple[str, int], ...] = (("+Inf", 0),)
    total: float = 0.0


@dataclass(slots=True)
class Latency:
    """Counts per bucket (not cumulative: one increment per observation), their sum and count.
    No prometheus_client here: the engine service fills it whether or not metrics are served."""

    buckets: tuple[float, ...] = BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))  # the last: above every bucket
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.total += seconds
        self.count += 1

    def view(self) -> Histogram:
        """Prometheus's buckets: (upper bound, observations at or below it), "+Inf" last."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*(repr(b) for b in self.buckets), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return Histogram(tuple(out), self.total)
