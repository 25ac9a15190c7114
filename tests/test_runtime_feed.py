"""How the probe service hands results to the engine: losses at once, answers held a few rounds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from failoverd.engine import events as ev
from failoverd.engine.state import EngineState, initial_state
from failoverd.engine.step import step
from failoverd.policy import load_policy
from failoverd.policy.model import Policy
from failoverd.probes.base import ProbeOutcome
from failoverd.services.base import Inbox
from failoverd.services.probes import ANSWERS_HELD, ProbeService

POLICY_PATH = Path(__file__).resolve().parent.parent / "policies" / "lab.yaml"
POLICY = load_policy(POLICY_PATH)
A, B = "udp-echo:198.19.0.1:7", "udp-echo:198.19.0.2:7"


class Engine:
    """The engine as the probe service reads it."""

    def __init__(self) -> None:
        self.policy: Policy = POLICY
        self.state: EngineState = initial_state(POLICY, time.monotonic())


class Probes(ProbeService):
    def __init__(self) -> None:
        self.engine = Engine()
        self.queue: Inbox = Inbox()
        super().__init__(self.engine, self.queue)


def daemon() -> Probes:
    return Probes()


def queued(d: Probes) -> list[ev.ProbeResult]:
    out: list[ev.ProbeResult] = []
    while not d.queue.empty():
        item = d.queue.get_nowait()
        assert isinstance(item, ev.ProbeResult | ev.ProbeBatch)
        out += item.results if isinstance(item, ev.ProbeBatch) else [item]
    return out


def test_answers_wait_and_a_loss_takes_them_along_in_order() -> None:
    d = daemon()
    d.probed([(("fiber", A), ProbeOutcome(True, 0.01)), (("fiber", B), ProbeOutcome(True, 0.02))])
    assert queued(d) == []  # good news waits
    assert d.stats[("fiber", A)].done == 1  # but the status counters are current
    d.probed([(("fiber", A), ProbeOutcome(False, None, "timeout"))])
    got = queued(d)
    assert [(r.probe, r.ok) for r in got] == [(A, True), (B, True), (A, False)]


def test_answers_reach_the_engine_within_the_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    d = daemon()
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    d.probed([(("fiber", A), ProbeOutcome(True, 0.01))])
    clock[0] += ANSWERS_HELD / 2
    d.probed([])  # an empty round still looks at the hold
    assert queued(d) == []
    clock[0] += ANSWERS_HELD / 2
    d.probed([])
    assert [(r.probe, r.ok) for r in queued(d)] == [(A, True)]


def test_a_loss_on_a_target_already_failed_is_not_urgent() -> None:
    d = daemon()
    now = time.monotonic()
    for i in range(5):  # fail target A of the fiber in the engine's state
        d.engine.state, _ = step(d.engine.state, ev.ProbeResult("fiber", A, False), POLICY, now + i * 0.05)
    assert d.engine.state.uplinks["fiber"].targets[A].failed
    d.probed([(("fiber", A), ProbeOutcome(False, None, "timeout"))])
    assert queued(d) == []
    d.probed([(("fiber", B), ProbeOutcome(False, None, "timeout"))])  # B has not failed: news
    assert [(r.probe, r.ok) for r in queued(d)] == [(A, False), (B, False)]
