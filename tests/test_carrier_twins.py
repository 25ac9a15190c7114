"""Carrier loss on a dual-stack uplink moves both families in one engine step, so in one kernel write.

The twins of a dual-stack uplink (fiber and fiber/v6, policy/compile.py) ride one device. The link
service used to tell the engine of each twin's carrier in an event of its own: the engine stepped
fiber, wrote the IPv4 route, saved alarms.json (two fsyncs), and only then stepped fiber/v6. In the
failover bench the IPv6 stream moved 3 to 4 ms after the IPv4 one on every carrier loss, and lost
twice as many packets (bench/README.md, "Carrier loss and the two families").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.state import EngineState, initial_state
from failoverd.engine.step import step
from failoverd.kernel.netlink import Link, LinkEvent
from failoverd.policy import load_policy, parse_policy_text
from failoverd.policy.model import Policy
from failoverd.services.links import LinkService

ROOT = Path(__file__).resolve().parent.parent
FAST = load_policy(ROOT / "bench" / "policies" / "fast.yaml")  # fiber and mobile-a, dual-stack


class FakeKernel:
    """What LinkService reads of the kernel writer: the links, and a watch that reports `events`."""

    def __init__(self, events: list[LinkEvent]) -> None:
        self.events = events
        self.links = {"fiber0": Link("fiber0", 2, True, True), "mob1": Link("mob1", 3, True, True)}

    async def watch(self) -> AsyncIterator[LinkEvent]:
        for e in self.events:
            yield e


class View:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy


def on_fiber(policy: Policy) -> EngineState:
    """Every probe answered for 3 s: both families of the class critical are on the fiber."""
    t = 0.0
    state, _ = step(initial_state(policy, t), ev.Tick(), policy, t)
    answers = ev.ProbeBatch(
        tuple(ev.ProbeResult(name, p.key, True, 0.005) for name, u in policy.uplinks.items() for p in u.probes)
    )
    while t < 3.0:
        t = round(t + 0.05, 3)
        while state.wake_at is not None and state.wake_at <= t:
            state, _ = step(state, ev.Tick(), policy, state.wake_at)
        state, _ = step(state, answers, policy, t)
    assert {n: c.uplink for n, c in state.classes.items()} == {"critical": "fiber", "critical/v6": "fiber/v6"}
    return state


async def told(kernel: FakeKernel, policy: Policy = FAST) -> list[ev.Event]:
    inbox: asyncio.Queue[object] = asyncio.Queue()
    service = LinkService(kernel, View(policy), inbox)  # type: ignore[arg-type]
    service.carrier = {name: True for name in policy.uplinks}  # what _announce said at start
    await service._watch()
    out: list[ev.Event] = []
    while not inbox.empty():
        item = inbox.get_nowait()
        assert isinstance(item, ev.CarrierChanged | ev.CarrierBatch), item
        out.append(item)
    return out


async def test_carrier_loss_of_a_dual_stack_uplink_is_one_event_for_both_twins() -> None:
    events = await told(FakeKernel([LinkEvent(Link("fiber0", 2, True, False))]))
    # Before the fix: two events, CarrierChanged("fiber") then CarrierChanged("fiber/v6"), two steps.
    assert events == [ev.CarrierBatch((ev.CarrierChanged("fiber", False), ev.CarrierChanged("fiber/v6", False)))]


async def test_that_one_event_moves_both_families_in_one_step() -> None:
    (event,) = await told(FakeKernel([LinkEvent(Link("fiber0", 2, True, False))]))
    state, effects = step(on_fiber(FAST), event, FAST, 10.0)
    moved = {(e.cls, e.to_uplink) for e in effects if isinstance(e, fx.SwitchClass)}
    assert moved == {("critical", "mobile-a"), ("critical/v6", "mobile-a/v6")}
    assert not state.uplinks["fiber"].carrier and not state.uplinks["fiber/v6"].carrier
    # The same step as the two single events, taken one after the other, would end in.
    one, _ = step(on_fiber(FAST), ev.CarrierChanged("fiber", False), FAST, 10.0)
    two, _ = step(one, ev.CarrierChanged("fiber/v6", False), FAST, 10.0)
    assert {n: c.uplink for n, c in state.classes.items()} == {n: c.uplink for n, c in two.classes.items()}


async def test_a_repeated_report_says_nothing_again() -> None:
    down = LinkEvent(Link("mob1", 3, True, False))
    events = await told(FakeKernel([down, down]))
    assert events == [ev.CarrierBatch((ev.CarrierChanged("mobile-a", False), ev.CarrierChanged("mobile-a/v6", False)))]


async def test_a_single_stack_uplink_still_gets_a_plain_carrier_event() -> None:
    text = "site: s\nuplinks:\n  - {name: wan, interface: fiber0, next_hop: 198.18.1.1}\n"
    policy = parse_policy_text(text + "classes:\n  - {name: all, path: [wan]}\n", "s.yaml")
    events = await told(FakeKernel([LinkEvent(Link("fiber0", 2, True, False))]), policy)
    assert events == [ev.CarrierChanged("wan", False)]
