"""The round driver: datagram probes of one interval sent, read and judged on one timer."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from failoverd.probes.base import LATE_SLACK, DatagramSession, ProbeOutcome

K = TypeVar("K")
LATE_GRACE = 0.002  # s: a round sent this late still counts from its tick (timeouts shrink by as much)


async def run_rounds(
    interval: float,
    sessions: Sequence[tuple[K, DatagramSession]],
    *,
    deliver: Callable[[list[tuple[K, ProbeOutcome]]], None],
    sending: Callable[[K], bool] = lambda _key: True,
    on_tick: Callable[[], None] = lambda: None,
) -> None:
    """Probe every `interval` on a grid of it, until cancelled.

    The loop wakes at each tick of the grid and, between ticks, only at a deadline that falls between
    them (a timeout that is not a multiple of the interval). At each wakeup it reads every answer
    waiting, declares the overdue probes lost, hands all of that to `deliver` at once and, at a tick,
    sends the next round. Answers are therefore noticed at most one interval (or one timeout) late,
    which costs nothing: recovery takes several answers anyway. Losses are noticed at their deadline.
    An uplink's targets are probed in step, not spread over the interval: an uplink falls when a
    quorum of its targets have failed, and a spread would delay that by up to an interval.
    """
    tick = math.ceil(time.monotonic() / interval) * interval
    while True:
        wake = tick
        for _key, s in sessions:
            due = s.next_deadline()
            if due is not None and due < wake - LATE_SLACK:
                wake = due
        await asyncio.sleep(max(0.0, wake - time.monotonic()))
        results: list[tuple[K, ProbeOutcome]] = []
        for key, s in sessions:
            results.extend((key, out) for out in s.collect())
        now = max(time.monotonic(), wake)
        for key, s in sessions:
            results.extend((key, out) for out in s.expire(now))
        if wake == tick:
            on_tick()
            # Due back by a point of the grid, so that expiry shares a tick's wakeup; but if this
            # round goes out late (a busy loop), its probes still get their whole timeout.
            start = tick if time.monotonic() - tick <= LATE_GRACE else time.monotonic()
            for key, s in sessions:
                if sending(key):
                    results.extend((key, out) for out in s.send(start + s.timeout))
            # Fell behind (suspended, overloaded)? Carry on from now, without a burst.
            tick = max(tick + interval, time.monotonic())
        if results:
            deliver(results)
