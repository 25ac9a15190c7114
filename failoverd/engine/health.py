"""Probe results and carrier → uplink health, with hysteresis, hold-down, target quorum and flap damping."""

# Theory of operation
# -------------------
# Each probe target keeps the samples of the last `window` seconds and its run of consecutive losses and
# successes. A target *fails* after `down_losses` consecutive losses, or when the window's loss reaches
# `down_loss_percent` once the window holds enough samples to mean something; it *recovers* after
# `up_successes` consecutive successes, and its window restarts so that old losses cannot fail it again.
#
# The uplink is DOWN when carrier is lost (at once, no probe needed) or when `quorum` targets have failed:
# one dead target of three is a problem of that target, not of the uplink. It comes back only after the
# down condition has been clear for `hold_down` seconds and `up_successes` fresh successes were seen since
# it went down (carrier returning proves nothing about the path beyond it).
#
# An UP uplink whose RTT, jitter or loss over the window crosses the `degraded` thresholds becomes DEGRADED
# at once; it returns to UP only after the metrics stayed below them for `clear_after` seconds.
#
# Flap damping follows RFC 2439 section 4.2: every fall from usable to DOWN adds `penalty` to a figure of
# merit that decays exponentially with `half_life`; above `suppress` the uplink is not used, below `reuse`
# it is used again. The penalty is capped so that suppression never outlasts `max_suppress` (4.2, "maximum
# hold down time").

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import replace

from failoverd.engine.effects import Cause
from failoverd.engine.state import USABLE, Health, Lifecycle, Sample, TargetState, UplinkState, judge, switch
from failoverd.policy.model import DampingSpec, HealthSpec, UplinkSpec

# Losses are not judged as a percentage before the window holds this share of the samples it can hold.
_MIN_WINDOW_FILL = 0.5


def _min_samples(h: HealthSpec, interval: float) -> int:
    return max(h.down_losses, math.ceil(h.window / interval * _MIN_WINDOW_FILL), 2)


def record_probes(
    spec: UplinkSpec, u: UplinkState, now: float, per_target: Mapping[str, list[tuple[bool, float | None, float]]]
) -> UplinkState:
    """Fold an uplink's probe results (answered, rtt, when), per probe key in the order they came, into its targets.

    This runs for every probe the daemon sends: one new UplinkState per batch and one new TargetState
    per target, not per result, and window statistics kept as samples come and go."""
    targets = dict(u.targets)
    fresh = u.fresh_successes
    for probe, outcomes in per_target.items():
        interval = next((p.interval for p in spec.probes if p.key == probe), None)
        if interval is None:
            continue  # a probe the current policy no longer has
        targets[probe], answered = _fold(spec.health, interval, targets.get(probe, _NO_HISTORY), now, outcomes)
        fresh += answered
    return replace(u, targets=targets, fresh_successes=fresh)


_NO_HISTORY = TargetState()


def _fold(
    h: HealthSpec, interval: float, t: TargetState, now: float, outcomes: list[tuple[bool, float | None, float]]
) -> tuple[TargetState, int]:
    """One target's results (each known at `at` <= now), in order: as single steps would judge them, in
    one pass. Also returns how many were answers."""
    # Samples are in time order and usually one at most has left the window since the last probe.
    cutoff, keep, held = now - h.window, 0, len(t.samples)
    while keep < held and t.samples[keep].t <= cutoff:
        keep += 1
    gone = t.samples[:keep]
    lost = t.lost_in_window - sum(1 for s in gone if not s.ok)
    rtt_sum, rtt_count = t.rtt_sum, t.rtt_count
    if gone:
        timed = [s.rtt for s in gone if s.ok and s.rtt is not None]
        rtt_sum -= sum(timed)
        rtt_count -= len(timed)
    samples = list(t.samples[keep:])
    least = _min_samples(h, interval)
    losses, successes, failed, why = t.losses, t.successes, t.failed, t.failed_cause
    answered = 0
    for ok, rtt, at in outcomes:
        samples.append(Sample(at, ok, rtt))
        if ok:
            answered += 1
            losses, successes = 0, successes + 1
            if rtt is not None:
                rtt_sum += rtt
                rtt_count += 1
        else:
            losses, successes, lost = losses + 1, 0, lost + 1
        if not failed:
            if losses >= h.down_losses:
                failed, why = True, f"{losses} consecutive losses"
            elif len(samples) >= least:
                loss = 100.0 * lost / len(samples)
                if loss >= h.down_loss_percent:
                    failed, why = True, f"{loss:.0f}% loss over {h.window:g}s"
        elif successes >= h.up_successes:
            failed, why = False, ""
            samples = samples[-successes:]  # a fresh window: the losses before recovery are judged already
            lost = 0  # the last `successes` samples are all answers
            timed = [s.rtt for s in samples if s.rtt is not None]
            rtt_sum, rtt_count = sum(timed), len(timed)
    if rtt_count == 0:
        rtt_sum = 0.0  # no drift from adding and subtracting survives an empty window
    return TargetState(tuple(samples), losses, successes, failed, why, lost, rtt_sum, rtt_count), answered


def _failed_targets(spec: UplinkSpec, u: UplinkState) -> list[str]:
    return [p.key for p in spec.probes if u.targets.get(p.key, TargetState()).failed]


def _alive_targets(spec: UplinkSpec, u: UplinkState) -> list[str]:
    """Targets whose last answer was a success."""
    out = []
    for p in spec.probes:
        t = u.targets.get(p.key)
        if t is not None and t.successes > 0 and not t.failed:
            out.append(p.key)
    return out


def _down_cause(spec: UplinkSpec, u: UplinkState) -> Cause | None:
    if u.modem_down is not None:
        return u.modem_down
    if not u.carrier:
        return Cause("carrier-loss", f"carrier lost on {spec.interface}", (("interface", spec.interface),))
    failed = _failed_targets(spec, u)
    if spec.probes and len(failed) >= spec.health.quorum:
        evidence = tuple((k, u.targets[k].failed_cause) for k in failed)
        return Cause(
            "probe-loss",
            f"{len(failed)} of {len(spec.probes)} probe targets failed (quorum {spec.health.quorum})",
            evidence,
        )
    return None


def _degraded_cause(spec: UplinkSpec, u: UplinkState) -> Cause | None:
    h = spec.health
    if h.degraded_rtt is None and h.degraded_jitter is None and h.degraded_loss_percent is None:
        return None
    # A failed target is that target's problem (the quorum judges it), not a sign of a degraded path.
    live = [t for p in spec.probes if not (t := u.targets.get(p.key, TargetState())).failed]
    held = sum(len(t.samples) for t in live)
    if not held:
        return None
    reasons: list[tuple[str, str]] = []
    timed = sum(t.rtt_count for t in live)
    if h.degraded_rtt is not None and timed >= 3:
        mean = sum(t.rtt_sum for t in live) / timed
        if mean > h.degraded_rtt:
            reasons.append(("rtt", f"{mean * 1000:.0f} ms > {h.degraded_rtt * 1000:.0f} ms"))
    if h.degraded_jitter is not None:
        diffs = []
        for t in live:
            rtts = [s.rtt for s in t.samples if s.ok and s.rtt is not None]
            diffs += [abs(b - a) for a, b in itertools.pairwise(rtts)]
        if len(diffs) >= 3:
            jitter = sum(diffs) / len(diffs)
            if jitter > h.degraded_jitter:
                reasons.append(("jitter", f"{jitter * 1000:.0f} ms > {h.degraded_jitter * 1000:.0f} ms"))
    if h.degraded_loss_percent is not None and held >= 4:
        loss = 100.0 * sum(t.lost_in_window for t in live) / held
        if loss >= h.degraded_loss_percent:
            reasons.append(("loss", f"{loss:.0f}% >= {h.degraded_loss_percent:g}%"))
    if not reasons:
        return None
    return Cause("degraded", ", ".join(f"{k} {v}" for k, v in reasons), tuple(reasons))


def decayed_penalty(d: DampingSpec, u: UplinkState, now: float) -> float:
    return float(u.penalty * 2.0 ** (-(now - u.penalty_at) / d.half_life))


def reuse_time(d: DampingSpec, u: UplinkState) -> float | None:
    """When a suppressed uplink's penalty will have decayed to the reuse threshold."""
    if not u.suppressed or u.penalty <= 0:
        return None
    return u.penalty_at + d.half_life * math.log2(u.penalty / d.reuse)


def _flap(d: DampingSpec, u: UplinkState, now: float) -> UplinkState:
    if not d.enabled:
        return u
    penalty = min(decayed_penalty(d, u, now) + d.penalty, d.ceiling)
    suppressed = u.suppressed or penalty > d.suppress
    return replace(
        u,
        penalty=penalty,
        penalty_at=now,
        suppressed=suppressed,
        suppressed_at=u.suppressed_at if u.suppressed else (now if suppressed else None),
    )


def update_damping(spec: UplinkSpec, u: UplinkState, now: float) -> tuple[UplinkState, Cause | None]:
    """Lift suppression once the penalty decayed below reuse. Returns a cause when it was lifted."""
    d = spec.damping
    if not u.suppressed:
        return u, None
    at = reuse_time(d, u)
    if at is not None and now < at:
        return u, None
    penalty = decayed_penalty(d, u, now)
    cause = Cause(
        "damping-reuse",
        f"flap penalty decayed to {penalty:.0f} (reuse {d.reuse:g}); uplink may be used again",
        (("penalty", f"{penalty:.0f}"),),
    )
    return replace(u, suppressed=False, suppressed_at=None, penalty=penalty, penalty_at=now), cause


def evaluate(spec: UplinkSpec, u: UplinkState, now: float) -> UplinkState:
    """Move the uplink's health to what the evidence now says; returns the state unchanged if nothing does."""
    h = spec.health
    if u.lifecycle in (Lifecycle.STANDBY, Lifecycle.FAILED):
        return u
    if u.lifecycle is Lifecycle.ACTIVATING:
        if not u.activated:
            return u
        if not spec.probes or len(_alive_targets(spec, u)) > len(spec.probes) - h.quorum:
            new = Health.DEGRADED if _degraded_cause(spec, u) else Health.UP
            cause = Cause("standby-up", f"activated and {spec.interface} passes traffic")
            return judge(switch(u, Lifecycle.ACTIVE, now, cause), new, now, cause)
        return u

    down = _down_cause(spec, u)
    if down is not None:
        if u.clear_since is not None or u.degraded_clear_since is not None:
            u = replace(u, clear_since=None, degraded_clear_since=None)
        if u.health is Health.DOWN:
            return u
        was_usable = u.health in USABLE
        u = replace(judge(u, Health.DOWN, now, down), fresh_successes=0)
        return _flap(spec.damping, u, now) if was_usable else u

    if u.clear_since is None:
        u = replace(u, clear_since=now)

    if u.health is Health.UNKNOWN:
        if spec.probes and len(_alive_targets(spec, u)) <= len(spec.probes) - h.quorum:
            return u  # not enough evidence either way yet
        degraded = _degraded_cause(spec, u)
        if degraded is not None:
            return judge(u, Health.DEGRADED, now, degraded)
        alive = _alive_targets(spec, u)
        text = f"{len(alive)} of {len(spec.probes)} probe targets answer" if spec.probes else "carrier up"
        return judge(u, Health.UP, now, Cause("probe-ok" if spec.probes else "carrier-up", text))

    if u.health is Health.DOWN:
        held = now - u.clear_since if u.clear_since is not None else 0.0
        if held < h.hold_down:
            return u
        if spec.probes and u.fresh_successes < h.up_successes:
            return u
        degraded = _degraded_cause(spec, u)
        evidence = (("hold_down", f"{h.hold_down:g}s"), ("successes", str(u.fresh_successes)))
        text = f"clean for {held:g}s (hold-down {h.hold_down:g}s)"
        if spec.probes:
            text += f" with {u.fresh_successes} probe successes"
        if degraded is not None:
            return judge(u, Health.DEGRADED, now, Cause("recovered-degraded", f"{text}; {degraded.text}", evidence))
        return judge(u, Health.UP, now, Cause("recovered", text, evidence))

    degraded = _degraded_cause(spec, u)
    if u.health is Health.UP:
        if degraded is not None:
            return judge(u, Health.DEGRADED, now, degraded)
        return u
    # DEGRADED
    if degraded is not None:
        return replace(u, degraded_clear_since=None) if u.degraded_clear_since is not None else u
    clear_since = u.degraded_clear_since
    if clear_since is None:
        clear_since = now
        u = replace(u, degraded_clear_since=now)
    if now - clear_since >= h.degraded_clear_after:
        return judge(
            u,
            Health.UP,
            now,
            Cause("degraded-clear", f"metrics below the degraded thresholds for {h.degraded_clear_after:g}s"),
        )
    return u


def next_deadline(spec: UplinkSpec, u: UplinkState) -> float | None:
    """The earliest time at which this uplink's state may change without a new event."""
    h = spec.health
    times: list[float] = []
    if u.health is Health.DOWN and u.clear_since is not None:
        times.append(u.clear_since + h.hold_down)
    if u.health is Health.DEGRADED and u.degraded_clear_since is not None:
        times.append(u.degraded_clear_since + h.degraded_clear_after)
    at = reuse_time(spec.damping, u)
    if at is not None:
        times.append(at)
    return min(times) if times else None
