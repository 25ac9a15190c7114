"""The simulator sends probes when the daemon's round driver does: the same grid, targets in step."""

from __future__ import annotations

import ast
import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

import failoverd.simulate as simulate_module
from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.state import EngineState
from failoverd.engine.step import step as engine_step
from failoverd.policy import load_policy
from failoverd.policy.model import Policy
from failoverd.probes import rounds as rounds_module
from failoverd.probes.base import DatagramSession, ProbeOutcome
from failoverd.probes.rounds import Rounds
from failoverd.probes.schedule import first_tick, next_tick, round_start, rounds
from failoverd.simulate import Simulation, Timeline

ROOT = Path(__file__).resolve().parent.parent
HORIZON = 3.0  # s of probing compared


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_767_225_600.0 + self.now


class Unanswered(DatagramSession):
    """A probe target that never answers: its datagrams go to a local socket nobody reads."""

    def __init__(self, timeout: float, sink: socket.socket) -> None:
        super().__init__(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), timeout)
        self.sink = sink.getsockname()

    def request(self) -> tuple[bytes, Any, int]:
        return b"probe", self.sink, self.next_seq()

    def match(self, data: bytes, addr: tuple[str, int]) -> int | None:
        return None


def _daemon_losses(policy: Policy, interval: float, start: float, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The losses the daemon's Rounds declares, when, for every probe of one interval (none answers)."""
    clock = Clock()
    clock.now = start
    monkeypatch.setattr(rounds_module, "time", clock)  # Rounds reads time.monotonic()
    monkeypatch.setattr("failoverd.probes.base.time", clock)  # and so does DatagramSession.send
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sessions = [((name, spec.key), Unanswered(spec.timeout, sink)) for name, spec in rounds(policy.uplinks)[interval]]
    seen: list[tuple[float, str, str, bool]] = []

    def deliver(results: list[tuple[tuple[str, str], ProbeOutcome]]) -> None:
        seen.extend((round(clock.now - start, 9), uplink, probe, out.ok) for (uplink, probe), out in results)

    async def drive() -> None:
        r = Rounds(interval, sessions, deliver=deliver)
        # The timer fires on time, at every wake the driver asks for.
        while r.wake - start <= HORIZON:
            clock.now = r.wake
            deliver(r._round())

    try:
        asyncio.run(drive())
    finally:
        sink.close()
        for _, s in sessions:
            s.sock.close()
    return seen


def _simulated_losses(policy: Policy, interval: float, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The losses the simulator hands the engine, when, for the probes of one interval (none answers)."""
    keys = {(name, spec.key) for name, spec in rounds(policy.uplinks)[interval]}
    seen: list[tuple[float, str, str, bool]] = []
    real_step = engine_step  # what the simulator calls, watched on its way

    def step(state: EngineState, event: ev.Event, pol: Policy, now: float) -> tuple[EngineState, tuple[fx.Effect, ...]]:
        results = event.results if isinstance(event, ev.ProbeBatch) else (event,)
        for r in results:
            if isinstance(r, ev.ProbeResult) and (r.uplink, r.probe) in keys:
                seen.append((round(now, 9), r.uplink, r.probe, r.ok))
        return real_step(state, event, pol, now)

    monkeypatch.setattr(simulate_module, "step", step)
    dead = {name: {"loss": 100} for name, u in policy.uplinks.items() if not u.standby.cold}
    Simulation(policy, Timeline.model_validate({"duration": HORIZON, "world": dead})).run()
    return seen


@pytest.mark.parametrize(
    ("policy", "interval"),
    [
        ("lab.yaml", 0.05),  # fiber: three targets, the timeout three ticks
        ("lab.yaml", 0.1),  # two carriers, two targets each, in one round
        ("emergency.yaml", 0.2),  # timeout 0.5 s: deadlines between the ticks
    ],
)
def test_simulator_declares_losses_when_the_daemons_rounds_do(
    policy: str, interval: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    pol = load_policy(ROOT / "policies" / policy)
    simulated = _simulated_losses(pol, interval, monkeypatch)
    daemon = _daemon_losses(pol, interval, 0.0, monkeypatch)
    assert len(daemon) >= HORIZON / interval  # the comparison is not empty
    horizon = max(t for t, *_ in simulated)
    assert sorted(simulated) == sorted(d for d in daemon if d[0] <= horizon)
    # Targets in step: every uplink's probes are lost at the same moments.
    by_probe: dict[tuple[str, str], list[float]] = {}
    for t, uplink, probe, _ in simulated:
        by_probe.setdefault((uplink, probe), []).append(t)
    for (uplink, _), times in by_probe.items():
        assert all(times == other for (u, _), other in by_probe.items() if u == uplink)


def test_a_daemon_started_between_ticks_keeps_the_same_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The grid is the monotonic clock cut into intervals, wherever the daemon started: a start
    between ticks only drops the ticks before it."""
    pol = load_policy(ROOT / "policies" / "lab.yaml")
    late = _daemon_losses(pol, 0.05, 0.013, monkeypatch)
    first = min(t for t, *_ in late) + 0.013
    assert first == pytest.approx(0.05 + 0.15)  # the first tick after 0.013 s, plus the timeout


def test_the_schedule_rules() -> None:
    assert first_tick(0.05, 0.0) == 0.0
    assert first_tick(0.05, 7.013) == pytest.approx(7.05)
    assert round_start(1.0, 1.001) == 1.0  # a little late: still counts from its tick
    assert round_start(1.0, 1.01) == 1.01  # late: the probes get their whole timeout
    assert next_tick(1.0, 0.05, 1.0) == 1.05
    assert next_tick(1.0, 0.05, 1.3) == 1.3  # fell behind: on from now, without a burst


def test_the_schedule_is_pure() -> None:
    """The simulator imports it: no clock, no socket, no event loop in it."""
    path = ROOT / "failoverd" / "probes" / "schedule.py"
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    allowed = ("__future__", "math", "collections.abc", "failoverd.engine.", "failoverd.policy.model")
    assert names and all(any(n == a or n.startswith(a) for a in allowed) for n in names), names
