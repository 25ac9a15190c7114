"""Clock consensus and verdict: samples become intervals, a majority of independent classes must agree.

Theory of operation
-------------------
Each time sample says "true time minus our wall clock is `offset`, give or take `error`" (for NTP,
RFC 5905 section 8: error = delay/2 + the server's root distance). As the sample ages its interval
widens by the drift bound (100 ppm is a typical ceiling for an undisciplined oscillator) times its
age. The consensus is the point covered by intervals from the most independence classes (the
operator of the source by default), found by sweeping the interval ends as in Marzullo's algorithm;
sources whose interval misses it are falsetickers. A consensus needs at least `min_classes` classes
and more than half of the classes that answered.

The verdict (`judge`) is a state machine written as a table; its rules are in the function, in order:
below the floor is INSANE; a local clock far from a confident majority is SUSPECT if it has run
steadily since it was last confirmed (the sources may be lying) and INSANE if it jumped; with no
sources the error bound grows from the last confirmation (HOLDOVER) until it exceeds the budget
(SUSPECT). Leaving SUSPECT or INSANE takes `hysteresis` good rounds in a row. Pure: no clock is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from failoverd.engine.events import ClockState

S = ClockState
TRANSITIONS: dict[ClockState, frozenset[ClockState]] = {
    S.UNKNOWN: frozenset({S.SANE, S.HOLDOVER, S.SUSPECT, S.INSANE}),
    S.SANE: frozenset({S.HOLDOVER, S.SUSPECT, S.INSANE}),
    S.HOLDOVER: frozenset({S.SANE, S.SUSPECT, S.INSANE}),
    S.SUSPECT: frozenset({S.SANE, S.HOLDOVER, S.INSANE}),
    S.INSANE: frozenset({S.SANE, S.SUSPECT}),
}


@dataclass(frozen=True, slots=True)
class Sample:
    source: str
    klass: str  # independence class: sources of one class count as one vote
    offset: float  # true time minus local wall clock, seconds
    error: float  # half-width of the interval when measured, seconds
    mono: float  # when measured, monotonic
    uplink: str | None = None
    stratum: int | None = None

    def interval(self, now: float, drift: float) -> tuple[float, float]:
        w = self.error + drift * max(0.0, now - self.mono)
        return self.offset - w, self.offset + w


@dataclass(frozen=True, slots=True)
class Consensus:
    ok: bool
    offset: float | None  # midpoint of the agreeing intervals' intersection
    bound: float | None  # half-width of that intersection
    agreeing: tuple[str, ...]
    classes: tuple[str, ...]  # classes that agree
    total_classes: int
    falsetickers: tuple[tuple[str, float], ...]  # (source, its offset)


def consensus(samples: Sequence[Sample], now: float, drift: float, min_classes: int) -> Consensus:
    if not samples:
        return Consensus(False, None, None, (), (), 0, ())
    ivals = [(s, *s.interval(now, drift)) for s in samples]
    total = len({s.klass for s in samples})
    best: tuple[int, int, float] | None = None
    best_point = 0.0
    for point in sorted({x for _, lo, hi in ivals for x in (lo, hi)}):
        cover = [s for s, lo, hi in ivals if lo <= point <= hi]
        key = (len({s.klass for s in cover}), len(cover), -abs(point))
        if best is None or key > best:
            best, best_point = key, point
    cover_ivals = [(s, lo, hi) for s, lo, hi in ivals if lo <= best_point <= hi]
    lo = max(lo for _, lo, _ in cover_ivals)
    hi = min(hi for _, _, hi in cover_ivals)
    classes = tuple(sorted({s.klass for s, _, _ in cover_ivals}))
    ok = len(classes) >= min_classes and 2 * len(classes) > total
    return Consensus(
        ok=ok,
        offset=(lo + hi) / 2,
        bound=(hi - lo) / 2,
        agreeing=tuple(s.source for s, _, _ in cover_ivals),
        classes=classes,
        total_classes=total,
        falsetickers=tuple((s.source, s.offset) for s, lo_, hi_ in ivals if not lo_ <= best_point <= hi_),
    )


@dataclass(frozen=True, slots=True)
class Step:
    """A wall-clock jump against the monotonic clock, faster than any slew could make it."""

    mono: float
    delta: float  # seconds the wall clock jumped (positive: forward)
    explained: bool
    why: str = ""


@dataclass(frozen=True, slots=True)
class Budget:
    max_error: float
    panic: float
    drift: float
    min_classes: int
    hysteresis: int
    floor: float  # wall-clock seconds; a clock before this cannot be right


@dataclass(frozen=True, slots=True)
class Verdict:
    state: ClockState = ClockState.UNKNOWN
    since: float = 0.0
    bound: float | None = None
    evidence: tuple[str, ...] = ()
    last_sane_mono: float | None = None
    last_sane_bound: float = 0.0
    good_rounds: int = 0
    jumped: Step | None = None  # an unexplained step not yet confirmed away by a SANE round
    steps: tuple[Step, ...] = field(default=())  # recent steps, newest last


def _go(v: Verdict, new: ClockState, now: float, bound: float | None, evidence: list[str]) -> Verdict:
    if new is not v.state and new not in TRANSITIONS[v.state]:
        raise AssertionError(f"illegal clock transition {v.state} -> {new}")
    return replace(v, state=new, since=now if new is not v.state else v.since, bound=bound, evidence=tuple(evidence))


def judge(
    v: Verdict,
    *,
    now: float,
    wall: float,
    samples: Sequence[Sample],
    steps: Sequence[Step],
    b: Budget,
    kernel_synced: bool = False,
) -> tuple[Verdict, Consensus]:
    """One round: the new verdict from this round's samples, the steps seen since the last round, and
    whether the kernel reports itself disciplined (evidence of continuity when failoverd has no history)."""
    v = replace(v, steps=(*v.steps, *steps)[-10:])
    for st in steps:
        if not st.explained and abs(st.delta) > b.max_error:
            v = replace(v, jumped=st)
    c = consensus(samples, now, b.drift, b.min_classes)
    ev: list[str] = []
    if c.falsetickers:
        ev.append("falsetickers: " + ", ".join(f"{s} ({o:+.3f}s)" for s, o in c.falsetickers))
    if v.jumped is not None:
        ev.append(f"unexplained wall-clock step of {v.jumped.delta:+.3f}s")
    steady = v.jumped is None and (v.last_sane_mono is not None or kernel_synced)

    if wall < b.floor:
        ev.insert(0, f"wall clock {wall:.0f} is before the floor {b.floor:.0f} (build date / last known good)")
        return _go(replace(v, good_rounds=0), S.INSANE, now, None, ev), c
    if samples and c.ok and c.offset is not None and c.bound is not None:
        off = c.offset
        ev.insert(0, f"{len(c.classes)} of {c.total_classes} classes agree: offset {off:+.4f}s ± {c.bound:.4f}s")
        if abs(off) <= b.max_error and c.bound <= b.max_error:
            good = v.good_rounds + 1
            if v.state in (S.SUSPECT, S.INSANE) and good < b.hysteresis:
                ev.append(f"agreeing round {good} of {b.hysteresis} before leaving {v.state.value}")
                return replace(v, good_rounds=good, evidence=tuple(ev)), c
            v = replace(v, good_rounds=good, last_sane_mono=now, last_sane_bound=abs(off) + c.bound, jumped=None)
            return _go(v, S.SANE, now, abs(off) + c.bound, ev), c
        v = replace(v, good_rounds=0)
        if abs(off) > b.panic and not steady:
            ev.append(f"local clock is {abs(off):.0f}s off a confident majority (panic {b.panic:g}s)")
            return _go(v, S.INSANE, now, abs(off) + c.bound, ev), c
        if abs(off) > b.panic:
            ev.append("the local clock has run steadily since it was last confirmed: the majority may be lying")
        else:
            ev.append(f"local clock outside the consensus (max error {b.max_error:g}s)")
        return _go(v, S.SUSPECT, now, abs(off) + c.bound, ev), c
    if samples:
        ev.insert(
            0,
            f"no majority: {len(c.classes)} of {c.total_classes} classes at best agree "
            f"(need {b.min_classes} and a majority)",
        )
        return _go(replace(v, good_rounds=0), S.SUSPECT, now, None, ev), c
    # No source answered.
    if v.last_sane_mono is None:
        # Never confirmed: nothing to hold over from; whatever was concluded stands.
        ev.insert(0, "no time source answers, and none has confirmed this clock yet")
        return replace(v, evidence=tuple(ev), good_rounds=0), c
    bound = v.last_sane_bound + b.drift * (now - v.last_sane_mono)
    age = now - v.last_sane_mono
    if bound <= b.max_error and v.jumped is None:
        ev.insert(0, f"no source answers; holdover for {age:.0f}s, error bound {bound:.4f}s of {b.max_error:g}s")
        state = S.HOLDOVER if v.state is not S.INSANE else S.SUSPECT
        return _go(replace(v, good_rounds=0), state, now, bound, ev), c
    ev.insert(0, f"no source answers for {age:.0f}s: error bound {bound:.3f}s exceeds {b.max_error:g}s")
    return _go(replace(v, good_rounds=0), S.SUSPECT, now, bound, ev), c
