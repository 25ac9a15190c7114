"""Modem profiles: a cellular uplink's active SIM/PLMN profile, its state machine as data, and when to switch."""

# Theory of operation
# -------------------
# A cellular uplink with `profiles` has one modem and, at any time, one active profile (SIM slot or
# eSIM profile, PLMN, APN). The modem's own evidence (events.ModemState: registration, operator,
# bearer) and the uplink's probes move the profile through PHASE_TRANSITIONS (modemstate.py):
#
#   UNKNOWN    no modem evidence yet (services/modem.py reports it): nothing here acts until it comes
#   ATTACHING  searching, idle, or registered without a data bearer; searching longer than
#              `searching_limit` fails the profile
#   SERVING    registered (home or roaming) with a data bearer
#   FAILED     the network rejected the modem (denied), it registered on a network not in the
#              profile's plmns, it kept searching, a switch to this profile
#              failed, or it is registered but passes no data (its probes failed while SERVING, or
#              none answered within `register_time` of SERVING)
#   SWITCHING  a SwitchProfile effect is in flight; nothing else is decided until ProfileSwitched
#              arrives or twice the switch's cost has passed (never two switches in flight)
#
# A FAILED or SWITCHING profile makes the uplink DOWN with its cause (UplinkState.modem_down), except
# "no data", which the probes already hold DOWN and may lift again: then the profile is SERVING again.
#
# From FAILED the next profile in the policy's order is tried (wrapping round, skipping profiles that
# failed within `retry_after`): a re-registration to its PLMN when it uses the same SIM (cheap, about
# `register_time`), a SIM-slot or eSIM switch otherwise (the modem re-initialises: `slot_switch_time`
# more). A switch costs the uplink's service, so while it is *covered* (every class that has it in its
# path and is admitted is routed via another usable uplink) only what `while_covered` allows goes
# ahead: `register` (default) lets cheap re-registrations go and holds slot switches, `wait` holds
# every switch, `any` holds none. A held switch is recorded once (a notice with cause
# `switch-deferred`) and goes ahead when the uplink is needed again.
#
# Failback to the first profile (revertive) follows the same rule, once the first profile has been
# failed for `revert_after`; the hold-down doubles with each failure of that profile in a row (up to
# 8x): damping, so a carrier that keeps failing is not switched back to every few minutes.
#
# At start (and for an uplink a reload brings) the engine does not know which profile the modem is
# on: after a daemon restart it may well be on slot 2, or registered to the partner network. The
# first report names the SIM (primary slot, or the eUICC's enabled eSIM profile) and the network;
# `in_use` picks the profile that matches, and the engine adopts it (a notice `profile-adopted`)
# instead of switching back to the first. A profile adopted so counts as if the first had failed at
# that moment: failback waits `revert_after` from there. A modem on a SIM no profile names is
# switched to the first profile at once (`profile-foreign-sim`): nothing in the policy says how to
# use that SIM. A report that names no SIM leaves the first profile assumed.
#
# A switch this ModemManager cannot make at all (enabling another eSIM profile on the eUICC:
# ModemManager 1.20 has no call for it) is answered `unsupported`: the target profile fails with
# cause `switch-unsupported`, and the next profile is tried as after any failed switch.
#
# An operator pin (`failoverctl modem use UPLINK --profile NAME`, an Override of kind "profile") comes
# before all of that in `plan`: while it holds, the modem is switched to the pinned profile at once
# (whatever while_covered says: the operator asked for that cost; after a switch in flight, and once
# the modem has reported at all, as a switch nobody answers would only take the uplink down) and
# never away from it, neither failover nor failback. A pinned profile that fails keeps the uplink
# DOWN, with a cause that names the pin (`down_cause`), rather than being left. When the pin expires
# or is released, the rules above apply again from where the profile is.

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from failoverd.engine.effects import Alarm, Cause, Effect, ProfileChanged, SwitchHow, SwitchProfile
from failoverd.engine.events import ModemState, ProfileSwitched
from failoverd.engine.modemstate import PHASE_TRANSITIONS, ModemView, Phase
from failoverd.engine.state import Health, Override, UplinkState
from failoverd.errors import EngineBug
from failoverd.policy.model import ModemSpec, ProfileSpec

MAX_BACKOFF = 8  # the failback hold-down grows to at most this many times revert_after


# Failures that hold the uplink DOWN whatever its probes say (no-data is the probes' own verdict).
_HOLDS_DOWN = frozenset(
    {"modem-denied", "modem-searching", "modem-wrong-network", "switch-failed", "switch-timeout", "switch-unsupported"}
)


def initial(spec: ModemSpec, now: float) -> ModemView:
    first = spec.profiles[0].name
    return ModemView(first, Phase.UNKNOWN, now, Cause("start", f"profile {first}; no modem evidence yet"))


def move(uplink: str, v: ModemView, new: Phase, now: float, cause: Cause, *, out: list[Effect]) -> ModemView:
    """The one way a phase changes: checked against the table, recorded with its cause."""
    if new not in PHASE_TRANSITIONS[v.phase]:
        raise EngineBug(f"illegal profile transition {uplink} {v.phase.value} -> {new.value} ({cause})")
    if new is Phase.FAILED:
        v = replace(
            v,
            failed_at={**v.failed_at, v.profile: now},
            failures={**v.failures, v.profile: v.failures.get(v.profile, 0) + 1},
        )
    elif new is Phase.SERVING:
        v = replace(v, failures={**v.failures, v.profile: 0})
    out.append(ProfileChanged(uplink, v.profile, v.phase.value, new.value, cause))
    return replace(v, phase=new, since=now, cause=cause, held="")


def _evidence(ev: ModemState) -> tuple[tuple[str, str], ...]:
    pairs = (
        ("registration", ev.registration),
        ("operator", ev.operator or ""),
        ("access", ev.access or ""),
        ("signal", "" if ev.signal is None else f"{ev.signal}%"),
        ("bearer", "connected" if ev.bearer else "none"),
        ("reason", ev.reason),
    )
    return tuple((k, x) for k, x in pairs if x)


def iccid_key(text: str) -> str:
    """An ICCID as compared: its BCD filler (a trailing F) and the case do not count."""
    return text.upper().rstrip("F")


def in_use(spec: ModemSpec, ev: ModemState) -> tuple[ProfileSpec | None, str]:
    """The profile the modem is on by its own report, and the SIM it uses in words: the eSIM profile
    (by ICCID) or the primary slot, then among that SIM's profiles the one whose manual registration
    is the network it is on, else the first in order that allows that network, else the SIM's first.
    (None, sim) for a SIM no profile names; (None, "") when the report does not say."""
    same: list[ProfileSpec] = []
    sim = ""
    if ev.esim and ev.iccid:
        sim = f"eSIM profile {ev.iccid}"
        same = [p for p in spec.profiles if p.esim is not None and iccid_key(p.esim) == iccid_key(ev.iccid)]
    if not same and ev.slot is not None:
        sim = f"SIM slot {ev.slot}" + (f" ({sim})" if sim else "")
        same = [p for p in spec.profiles if p.slot == ev.slot]
    if not same:
        return None, sim
    on = ev.operator if ev.registration in ("home", "roaming") else None
    if on:
        for p in same:
            if p.register == on:
                return p, sim
        for p in same:
            if not p.plmns or on in p.plmns:
                return p, sim
    return same[0], sim


def _adopt(
    spec: ModemSpec, v: ModemView, ev: ModemState, now: float, *, out: list[Effect], pin: Override | None
) -> ModemView:
    """The first report since the start: take the profile the modem is on, rather than switching to it."""
    found, sim = in_use(spec, ev)
    if not sim:
        return v  # the report names no SIM: the first profile stays assumed
    on = f", registered ({ev.registration}) on {ev.operator}" if ev.operator else f", {ev.registration}"
    evidence = (("sim", sim), *_evidence(ev))
    first = spec.profiles[0]
    if found is None:
        # Nothing in the policy says how to use that SIM: to the first profile, or an operator's pin.
        to = spec.profile(pin.profile) if pin is not None and pin.profile else first
        cost = spec.register_time + spec.slot_switch_time
        text = f"the modem uses {sim}{on}, which no profile names: switched to profile {to.name} "
        text += f"({to.sim}, about {cost:g}s)"
        if pin is not None:
            text += f", pinned by override {pin.id} ({pin.reason!r} by {pin.by})"
            cause = Cause("profile-pinned", text, (("override", pin.id), *evidence))
        else:
            cause = Cause("profile-foreign-sim", text, evidence)
        v = move(ev.uplink, v, Phase.SWITCHING, now, cause, out=out)
        out.append(SwitchProfile(ev.uplink, to.name, "slot", to.plmn, to.apn, cause))
        return replace(v, target=to.name, switch_deadline=now + 2 * cost)
    if found.name == v.profile:
        return v
    text = f"the modem uses {sim}{on}: profile {found.name} adopted as it is, not switched to {v.profile}"
    out.append(Alarm("info", ev.uplink, Cause("profile-adopted", text, (("profile", found.name), *evidence))))
    return replace(v, profile=found.name, adopted_at=now if found.name != first.name else None)


def observe(
    spec: ModemSpec, v: ModemView, ev: ModemState, now: float, *, out: list[Effect], pin: Override | None = None
) -> ModemView:
    """Fold the modem's report into the view; registration and bearer move the phase. The first report
    since the start says which profile the modem is on (`_adopt`)."""
    if v.phase is Phase.UNKNOWN:
        v = _adopt(spec, v, ev, now, out=out, pin=pin)
    registered = ev.registration in ("home", "roaming")
    searching_since = None if registered else (v.searching_since if v.searching_since is not None else now)
    v = replace(
        v,
        registration=ev.registration,
        operator=ev.operator,
        access=ev.access,
        signal=ev.signal,
        bearer=ev.bearer,
        searching_since=searching_since,
    )
    if v.phase is Phase.SWITCHING:
        return v  # a modem mid-switch reports what it passes through; ProfileSwitched ends the switch
    name = ev.uplink
    if ev.registration == "denied":
        if v.phase is Phase.FAILED:
            return v
        why = f": {ev.reason}" if ev.reason else ""
        cause = Cause("modem-denied", f"profile {v.profile}: the network rejected the modem{why}", _evidence(ev))
        return move(name, v, Phase.FAILED, now, cause, out=out)
    allowed = spec.profile(v.profile).plmns
    if registered and ev.operator and allowed and ev.operator not in allowed:
        # Automatic selection put it on a network the profile does not allow (roaming charges,
        # a network the subscription has no data on): failed, as a rejection is.
        if v.phase is Phase.FAILED:
            return v
        text = f"profile {v.profile}: registered on {ev.operator}, not one of its networks ({', '.join(allowed)})"
        return move(name, v, Phase.FAILED, now, Cause("modem-wrong-network", text, _evidence(ev)), out=out)
    if registered and ev.bearer:
        if v.phase in (Phase.UNKNOWN, Phase.ATTACHING) or (v.phase is Phase.FAILED and v.cause.code in _HOLDS_DOWN):
            on = f" on {ev.operator}" if ev.operator else ""
            text = f"profile {v.profile}: registered ({ev.registration}){on} with a data bearer"
            return move(name, v, Phase.SERVING, now, Cause("modem-serving", text, _evidence(ev)), out=out)
        return v
    if v.phase in (Phase.UNKNOWN, Phase.SERVING):
        what = f"registered ({ev.registration}) without a data bearer" if registered else ev.registration
        cause = Cause("modem-attaching", f"profile {v.profile}: {what}", _evidence(ev))
        return move(name, v, Phase.ATTACHING, now, cause, out=out)
    return v


def switched(v: ModemView, ev: ProfileSwitched, now: float, *, out: list[Effect]) -> ModemView:
    """The runtime's answer to SwitchProfile; a late answer to a switch that timed out is ignored."""
    if v.phase is not Phase.SWITCHING or ev.profile != v.target:
        return v
    v = replace(v, profile=ev.profile, target=None, switch_deadline=None)
    if ev.ok:
        cause = Cause("profile-switched", f"modem now uses profile {ev.profile}; registering")
        # Registration time counts against the searching limit from here.
        return move(ev.uplink, replace(v, searching_since=now), Phase.ATTACHING, now, cause, out=out)
    code = "switch-unsupported" if ev.unsupported else "switch-failed"
    cause = Cause(code, f"switch to profile {ev.profile} failed: {ev.detail}", (("detail", ev.detail),))
    return move(ev.uplink, v, Phase.FAILED, now, cause, out=out)


def timers(uplink: str, spec: ModemSpec, v: ModemView, now: float, *, out: list[Effect]) -> ModemView:
    """Deadlines: a switch that never answered, a modem that kept searching."""
    if v.phase is Phase.SWITCHING and v.switch_deadline is not None and now >= v.switch_deadline:
        target = v.target or v.profile
        v = replace(v, profile=target, target=None, switch_deadline=None)
        cause = Cause("switch-timeout", f"switch to profile {target} not answered in time")
        return move(uplink, v, Phase.FAILED, now, cause, out=out)
    if (
        v.phase in (Phase.UNKNOWN, Phase.ATTACHING)
        and v.searching_since is not None
        and now - v.searching_since >= spec.searching_limit
    ):
        text = f"profile {v.profile}: not registered for {now - v.searching_since:g}s ({v.registration})"
        ev = (("limit", f"{spec.searching_limit:g}s"), ("registration", v.registration))
        return move(uplink, v, Phase.FAILED, now, Cause("modem-searching", text, ev), out=out)
    return v


def judge_data(
    uplink: str, spec: ModemSpec, v: ModemView, u: UplinkState, now: float, *, out: list[Effect]
) -> ModemView:
    """Registered is not working: a SERVING profile whose probes fail has failed (no data); one that
    failed so and whose probes pass again is SERVING again."""
    if v.phase is Phase.SERVING and u.health is Health.DOWN and u.cause.code == "probe-loss":
        fell = u.since >= v.since  # went down while serving
        never = now - v.since >= spec.register_time and u.fresh_successes == 0  # no answer since attaching
        if fell or never:
            text = f"profile {v.profile}: registered on {v.operator or '?'} but passes no data ({u.cause.text})"
            return move(uplink, v, Phase.FAILED, now, Cause("modem-no-data", text, u.cause.evidence), out=out)
    if v.phase is Phase.FAILED and v.cause.code == "modem-no-data" and u.health in (Health.UP, Health.DEGRADED):
        cause = Cause("modem-data", f"profile {v.profile} passes data again ({u.cause.text})")
        return move(uplink, v, Phase.SERVING, now, cause, out=out)
    return v


def down_cause(v: ModemView, pin: Override | None = None) -> Cause | None:
    """What holds the uplink DOWN on the modem's account, if anything; a failed pinned profile says so."""
    if v.phase is Phase.FAILED and v.cause.code in _HOLDS_DOWN and pin is not None and pin.profile == v.profile:
        text = (
            f"profile {v.profile} is pinned by override {pin.id} ({pin.reason!r} by {pin.by}) and failed, "
            f"not switched away: {v.cause.text}"
        )
        return Cause("profile-pinned", text, (("override", pin.id), ("failure", v.cause.code), *v.cause.evidence))
    if v.phase is Phase.SWITCHING or (v.phase is Phase.FAILED and v.cause.code in _HOLDS_DOWN):
        return v.cause
    return None


def _next(spec: ModemSpec, v: ModemView, now: float) -> ProfileSpec | None:
    """The next profile after the active one in the policy's order that has not failed lately."""
    names = [p.name for p in spec.profiles]
    i = names.index(v.profile)
    for p in spec.profiles[i + 1 :] + spec.profiles[:i]:
        at = v.failed_at.get(p.name)
        if at is None or now - at >= spec.retry_after:
            return p
    return None


def judged_failed(spec: ModemSpec, v: ModemView, profile: str, now: float) -> str | None:
    """Why the engine holds `profile` failed now (the active one FAILED, or another that failed within
    retry_after and would be skipped), or None; an operator pins such a profile only with --force."""
    active = v.target if v.phase is Phase.SWITCHING else v.profile
    if profile == active:
        return f"profile {profile} has failed ({v.cause.code}: {v.cause.text})" if v.phase is Phase.FAILED else None
    at = v.failed_at.get(profile)
    if at is not None and now - at < spec.retry_after:
        return f"profile {profile} failed {now - at:.0f}s ago (retried after {spec.retry_after:g}s)"
    return None


def failback_at(spec: ModemSpec, v: ModemView) -> float | None:
    """When the first profile may be tried again (revertive), with the hold-down's backoff."""
    first = spec.profiles[0].name
    if not spec.revertive or v.profile == first or v.phase is not Phase.SERVING:
        return None
    at = v.failed_at.get(first, v.adopted_at)  # adopted at start: as if the first had failed then
    if at is None:
        return v.since
    backoff: int = min(2 ** max(v.failures.get(first, 1) - 1, 0), MAX_BACKOFF)
    return at + spec.revert_after * backoff


def _pinned(uplink: str, spec: ModemSpec, v: ModemView, pin: Override, now: float, *, out: list[Effect]) -> ModemView:
    """An operator's pin: switch to its profile if the modem is elsewhere, else stay, failed or not."""
    if v.phase is Phase.SWITCHING:
        return v  # never two switches in flight: the pinned one follows when this one has ended
    if v.phase is Phase.UNKNOWN:
        # No word from the modem yet (just started, or no modem service): a switch would go unanswered
        # and time out with the uplink DOWN. The pin takes effect with the modem's first report.
        return v
    if v.profile == pin.profile:
        if v.phase is Phase.FAILED and v.held != f"pinned/{pin.id}":
            text = f"profile {v.profile} failed ({v.cause.code}) but is pinned by override {pin.id}: not switched"
            out.append(Alarm("warning", uplink, Cause("pinned-failed", text, (("override", pin.id),))))
            v = replace(v, held=f"pinned/{pin.id}")
        return v
    frm, to = spec.profile(v.profile), spec.profile(pin.profile or "")
    how: SwitchHow = "register" if frm.sim == to.sim else "slot"
    cost = spec.switch_time(frm, to)
    evidence = (("override", pin.id), ("from", frm.name), ("to", to.name), ("how", how), ("cost", f"{cost:g}s"))
    text = (
        f"operator override {pin.id}: {pin.reason!r} by {pin.by}: {how} to {to.name} "
        f"({to.plmn or 'automatic'}, about {cost:g}s)"
    )
    cause = Cause("profile-pinned", text, evidence)
    v = move(uplink, v, Phase.SWITCHING, now, cause, out=out)
    out.append(SwitchProfile(uplink, to.name, how, to.plmn, to.apn, cause))
    return replace(v, target=to.name, switch_deadline=now + 2 * cost)


def plan(
    uplink: str,
    spec: ModemSpec,
    v: ModemView,
    covered: Callable[[], bool],
    now: float,
    *,
    out: list[Effect],
    pin: Override | None = None,
) -> ModemView:
    """Start a switch where one is due and allowed: to an operator's pinned profile; else failover from
    a FAILED profile, failback to the first. `covered` is asked only then (it reads every class)."""
    if pin is not None:
        return _pinned(uplink, spec, v, pin, now, out=out)
    if v.phase is Phase.FAILED:
        to = _next(spec, v, now)
        if to is None:
            if v.held != "none-left":
                text = f"profile {v.profile} failed and every other profile failed within {spec.retry_after:g}s"
                out.append(Alarm("warning", uplink, Cause("no-profile-left", text)))
                v = replace(v, held="none-left")
            return v
        why = f"profile {v.profile} failed ({v.cause.code})"
        code = "profile-failover"
    else:
        at = failback_at(spec, v)
        if at is None or now < at:
            return v
        to = spec.profiles[0]
        since = "its failure" if to.name in v.failed_at else "the start found the modem on another profile"
        why = f"failback: profile {to.name} held down since {since}"
        code = "profile-failback"
    frm = spec.profile(v.profile)
    how: SwitchHow = "register" if frm.sim == to.sim else "slot"
    free = spec.while_covered == "any" or (spec.while_covered == "register" and how == "register")
    allowed = free or not covered()
    if not allowed:
        key = f"{to.name}/{how}"
        if v.held != key:
            text = (
                f"{why}; every class {uplink} serves is usable elsewhere, so the {how} switch to {to.name} "
                f"waits (profile_switch.while_covered: {spec.while_covered})"
            )
            out.append(Alarm("info", uplink, Cause("switch-deferred", text, (("profile", to.name), ("how", how)))))
            v = replace(v, held=key)
        return v
    cost = spec.switch_time(frm, to)
    evidence = (("from", frm.name), ("to", to.name), ("how", how), ("cost", f"{cost:g}s"))
    cause = Cause(code, f"{why}: {how} to {to.name} ({to.plmn or 'automatic'}, about {cost:g}s)", evidence)
    v = move(uplink, v, Phase.SWITCHING, now, cause, out=out)
    out.append(SwitchProfile(uplink, to.name, how, to.plmn, to.apn, cause))
    return replace(v, target=to.name, switch_deadline=now + 2 * cost)


def wake_times(spec: ModemSpec, v: ModemView, u: UplinkState) -> list[float]:
    """When a Tick may change this modem's view without an event."""
    times: list[float] = []
    if v.switch_deadline is not None:
        times.append(v.switch_deadline)
    if v.phase in (Phase.UNKNOWN, Phase.ATTACHING) and v.searching_since is not None:
        times.append(v.searching_since + spec.searching_limit)
    if v.phase is Phase.SERVING and u.health is Health.DOWN:
        times.append(v.since + spec.register_time)
    at = failback_at(spec, v)
    if at is not None:
        times.append(at)
    if v.phase is Phase.FAILED:
        times += [t + spec.retry_after for t in v.failed_at.values()]
    return times
