"""The round driver: datagram probes of one interval sent, read and judged on one timer."""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from failoverd.probes.base import LATE_SLACK, DatagramSession, ProbeOutcome
from failoverd.probes.schedule import first_tick, next_tick, round_start

K = TypeVar("K")


class Rounds(Generic[K]):
    """Probe every `interval` on a grid of it (probes/schedule.py), from one timer callback (no task,
    no future per round).

    The timer fires at each tick of the grid and, between ticks, only at a deadline that falls between
    them (a timeout that is not a multiple of the interval). Each time it reads every answer waiting,
    declares the overdue probes lost, hands all of that to `deliver` at once and, at a tick, sends the
    next round. Answers are therefore noticed at most one interval (or one timeout) late, which costs
    nothing: recovery takes several answers anyway. Losses are noticed at their deadline. An uplink's
    targets are probed in step, not spread over the interval: an uplink falls when a quorum of its
    targets have failed, and a spread would delay that by up to an interval.

    Why a bare callback: on a small gateway every wakeup of the event loop costs a few hundred
    microseconds, and a task sleeping between rounds costs two loop iterations and a future each time.
    """

    def __init__(
        self,
        interval: float,
        sessions: Sequence[tuple[K, DatagramSession]],
        *,
        deliver: Callable[[list[tuple[K, ProbeOutcome]]], None],
        sending: Callable[[K], bool] = lambda _key: True,
        on_tick: Callable[[], None] = lambda: None,
    ) -> None:
        self.interval = interval
        self.sessions = sessions
        self.deliver = deliver
        self.sending = sending
        self.on_tick = on_tick
        self.loop = asyncio.get_running_loop()  # its clock is time.monotonic
        self.tick = first_tick(interval, time.monotonic())
        self.wake = self.tick
        self.timer: asyncio.TimerHandle | None = None
        self.failed: asyncio.Future[None] = self.loop.create_future()
        # One poll() tells which sockets hold answers: a read per answer, not a failed read per socket.
        self.poller = select.poll()
        self.by_fd: dict[int, tuple[K, DatagramSession]] = {}
        for key, s in sessions:
            self.by_fd[s.sock.fileno()] = (key, s)
            self.poller.register(s.sock.fileno(), select.POLLIN)

    async def run(self) -> None:
        """Probe until cancelled (or until a callback raises: then with that exception)."""
        self.timer = self.loop.call_at(self.wake, self._fire)
        try:
            await self.failed
        finally:
            self.stop()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fire(self) -> None:
        try:
            results = self._round()
            self.timer = self.loop.call_at(self.wake, self._fire)
            self.deliver(results)  # also when empty: the receiver may be holding earlier results
        except Exception as exc:  # a callback's exception would only be logged: end run() with it
            self.stop()
            if not self.failed.done():
                self.failed.set_exception(exc)

    def _round(self) -> list[tuple[K, ProbeOutcome]]:
        """Read, judge and (at a tick) send; set `wake` to the next tick or the deadline before it.

        One pass over the sessions does all three: at short intervals every pass costs."""
        results: list[tuple[K, ProbeOutcome]] = []
        while ready := self.poller.poll(0):
            for fd, events in ready:
                if events & select.POLLNVAL:  # closed under us: never ready again, so stop asking
                    self.poller.unregister(fd)
                    continue
                key, s = self.by_fd[fd]
                for out in s.collect(reads=1):
                    results.append((key, out))
        now = max(time.monotonic(), self.wake)
        tick = self.wake == self.tick
        start = 0.0
        if tick:
            self.on_tick()
            # Due back by a point of the grid, so that expiry shares a tick's wakeup; but if this
            # round goes out late (a busy loop), its probes still get their whole timeout.
            late = time.monotonic()
            start = round_start(self.tick, late)
            # Fell behind (suspended, overloaded)? Carry on from now, without a burst.
            self.tick = next_tick(self.tick, self.interval, late)
        wake = self.tick
        for key, s in self.sessions:
            if s.pending:
                for out in s.expire(now):
                    results.append((key, out))
            if tick and self.sending(key):
                for out in s.send(start + s.timeout):
                    results.append((key, out))
            due = s.next_deadline()
            if due is not None and due < wake - LATE_SLACK:
                wake = due
        self.wake = wake
        return results
