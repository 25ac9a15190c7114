"""Clock consensus and verdicts, pure: liars, lying majorities, holdover, steps, the floor, hysteresis."""

from __future__ import annotations

import struct

from failoverd.clock.consensus import Budget, Sample, Step, Verdict, consensus, judge
from failoverd.clock.sntp import build_request, parse_reply, to_ntp
from failoverd.engine.events import ClockState as S

B = Budget(max_error=0.5, panic=1000, drift=100e-6, min_classes=3, hysteresis=3, floor=1_700_000_000)
WALL = 1_800_000_000.0


def honest(name: str, offset: float = 0.001, mono: float = 0.0) -> Sample:
    return Sample(name, f"op-{name}", offset, 0.01, mono)


def run(
    v: Verdict,
    samples: list[Sample],
    now: float = 0.0,
    steps: tuple[Step, ...] = (),
    synced: bool = False,
    wall: float = WALL,
) -> Verdict:
    v, _ = judge(v, now=now, wall=wall, samples=samples, steps=steps, b=B, kernel_synced=synced)
    return v


def test_one_liar_among_four_is_named_and_the_clock_is_sane() -> None:
    samples = [honest("a"), honest("b", -0.002), honest("c"), honest("liar", 1000.0)]
    c = consensus(samples, 0.0, B.drift, B.min_classes)
    assert c.ok and c.falsetickers == (("liar", 1000.0),) and len(c.classes) == 3
    v = run(Verdict(), samples)
    assert v.state is S.SANE and "falsetickers: liar (+1000.000s)" in v.evidence


def test_a_lying_majority_never_yields_a_confident_wrong_answer() -> None:
    v = run(Verdict(), [honest(n) for n in "abcd"])
    assert v.state is S.SANE
    liars = [honest("a", 1500.0), honest("b", 1500.0), honest("c", 1500.0), honest("d")]
    v = run(v, liars, now=16)
    assert v.state is S.SUSPECT
    assert any("majority may be lying" in e for e in v.evidence)
    # Without any history or a disciplined kernel there is nothing to doubt them with: INSANE, not SANE.
    assert run(Verdict(), liars).state is S.INSANE
    assert run(Verdict(), liars, synced=True).state is S.SUSPECT


def test_no_majority_is_suspect() -> None:
    v = run(Verdict(), [honest("a"), honest("b", 50.0), honest("c", -50.0), honest("d", 400.0)])
    assert v.state is S.SUSPECT and v.evidence[0].startswith("no majority")


def test_holdover_then_suspect_as_the_bound_grows() -> None:
    v = run(Verdict(), [honest(n) for n in "abc"])
    assert v.state is S.SANE
    v = run(v, [], now=100)
    assert v.state is S.HOLDOVER and v.bound is not None and v.bound < 0.1
    v = run(v, [], now=100 + 5000)  # 100 ppm × 5000 s = 0.5 s: past the budget
    assert v.state is S.SUSPECT and "exceeds" in v.evidence[0]


def test_a_clock_below_the_floor_is_insane() -> None:
    v = run(Verdict(), [honest(n) for n in "abc"], wall=0.0)  # booted in 1970 with no RTC
    assert v.state is S.INSANE and "floor" in v.evidence[0]


def test_unexplained_steps_and_hysteresis() -> None:
    v = run(Verdict(), [honest(n) for n in "abc"])
    step = Step(mono=10.0, delta=20 * 365 * 86400.0, explained=False, why="test")
    v = run(v, [honest(n, -step.delta) for n in "abc"], now=11, steps=(step,))
    assert v.state is S.INSANE  # the clock jumped 20 years and a confident majority says so
    # The clock is put right; it takes three agreeing rounds to trust it again.
    for i, want in enumerate((S.INSANE, S.INSANE, S.SANE)):
        v = run(v, [honest(n) for n in "abc"], now=12 + i)
        assert v.state is want, i
    small = Step(mono=20.0, delta=1.0, explained=False, why="test")
    v = run(v, [honest(n, -1.0) for n in "abc"], now=21, steps=(small,))
    assert v.state is S.SUSPECT and any("unexplained" in e for e in v.evidence)
    explained = Step(mono=30.0, delta=-1.0, explained=True, why="chrony stepped it")
    assert run(Verdict(), [honest(n) for n in "abc"], steps=(explained,)).jumped is None


def test_sntp_reply_parsing() -> None:
    t1 = WALL
    _, xmt = build_request(t1)
    # Server clock 2 s ahead, 10 ms each way, 1 ms in the server.
    t2, t3, t4 = t1 + 0.010 + 2, t1 + 0.011 + 2, t1 + 0.021
    pkt = struct.pack("!BBbbIIIQQQQ", 0x24, 2, 0, -20, 0x8000, 0x8000, 0x7F000001, 0, xmt, to_ntp(t2), to_ntp(t3))
    r = parse_reply("s", pkt, xmt=xmt, t1=t1, t4=t4, mono=5.0)
    assert r.ok and abs(r.offset - 2.0) < 1e-6 and abs(r.delay - 0.020) < 1e-6
    assert abs(r.root_distance - (0.5 / 2 + 0.5)) < 1e-6
    bad = parse_reply("s", pkt, xmt=xmt ^ 1, t1=t1, t4=t4, mono=5.0)
    assert not bad.ok and "origin" in bad.error
    kod = struct.pack("!BBbbIIIQQQQ", 0xE4, 0, 0, 0, 0, 0, int.from_bytes(b"RATE", "big"), 0, xmt, 0, 0)
    assert parse_reply("s", kod, xmt=xmt, t1=t1, t4=t4, mono=5.0).error == "Kiss-o'-Death RATE"
    unsync = struct.pack("!BBbbIIIQQQQ", 0xE4, 3, 0, 0, 0, 0, 0, 0, xmt, to_ntp(t2), to_ntp(t3))
    assert parse_reply("s", unsync, xmt=xmt, t1=t1, t4=t4, mono=5.0).error == "server unsynchronized"
