"""Modem profiles (engine/profiles.py): the state machine, the switch rules, and properties over random events."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.decide import usable
from failoverd.engine.modemstate import PHASE_TRANSITIONS, Phase
from failoverd.engine.state import EngineState, initial_state
from failoverd.engine.step import step
from failoverd.policy import parse_policy_text
from failoverd.policy.model import Policy

TEMPLATE = """
site: profiles
uplinks:
  - name: fiber
    interface: eth1
    next_hop: 192.0.2.1
    probes: [{kind: icmp, target: 198.51.100.1, interval: 1s}]
    health: {up: {successes: 1, hold_down: 1s}}
  - name: mobile
    interface: wwan0
    point_to_point: true
    kind: cellular
    probes: [{kind: icmp, target: 198.51.100.1, interval: 1s}]
    health: {up: {successes: 1, hold_down: 1s}}
    profiles:
      - {name: a, slot: 1, apn: internet, plmns: ["20408"]}
      - {name: a-roam, slot: 1, apn: internet, plmns: ["20408", "20416"], register: "20416"}
      - {name: b, slot: 2, apn: internet, plmns: ["20416"]}
    profile_switch:
      register_time: 5s
      slot_switch_time: 10s
      searching_limit: 20s
      while_covered: WHILE
      revert_after: 100s
      retry_after: 50s
classes:
  - {name: dispatch, match: [{dscp: [EF]}], path: [fiber, mobile]}
  - {name: default, path: [fiber, mobile]}
"""


def policy(while_covered: str = "register", *, profiles: bool = True) -> Policy:
    text = TEMPLATE.replace("WHILE", while_covered)
    if not profiles:
        text = text.split("    profiles:")[0] + "classes:" + text.split("classes:")[1]
    return parse_policy_text(text, "<profiles>")


POLICY = policy()
SERVING = ev.ModemState("mobile", "home", "20408", "lte", 60, bearer=True)
DENIED = ev.ModemState("mobile", "denied", reason="illegal MS")


def run(
    timeline: Sequence[tuple[float, ev.Event]], pol: Policy = POLICY
) -> list[tuple[float, EngineState, EngineState, tuple[fx.Effect, ...]]]:
    state = initial_state(pol, 0.0)
    out = []
    for t, event in sorted(timeline, key=lambda x: x[0]):
        # The runtime's timers, as the daemon's loop: a Tick at every wake-up before the next event.
        while state.wake_at is not None and state.wake_at <= t:
            before = state
            state, effects = step(state, ev.Tick(), pol, state.wake_at)
            out.append((before.wake_at or 0.0, before, state, effects))
        before = state
        state, effects = step(state, event, pol, max(t, state.now))
        out.append((state.now, before, state, effects))
    return out


def switches(
    steps: list[tuple[float, EngineState, EngineState, tuple[fx.Effect, ...]]],
) -> list[tuple[float, fx.SwitchProfile]]:
    return [(t, e) for t, _, _, effects in steps for e in effects if isinstance(e, fx.SwitchProfile)]


def probes(uplink: str, ok: bool, start: float, end: float) -> list[tuple[float, ev.Event]]:
    return [
        (float(t), ev.ProbeResult(uplink, "icmp:198.51.100.1", ok, 0.02 if ok else None))
        for t in range(int(start), int(end))
    ]


# -- rules ------------------------------------------------------------------------------------------


def test_without_modem_evidence_profiles_change_nothing() -> None:
    """Until the modem service has reported (no ModemManager, say), a policy with profiles decides as one without."""
    timeline = probes("fiber", True, 0, 10) + probes("mobile", True, 0, 40) + probes("fiber", False, 10, 40)
    with_profiles = [(t, e) for t, _, _, fxs in run(timeline) for e in fxs if isinstance(e, fx.SwitchClass)]
    without = [
        (t, e) for t, _, _, fxs in run(timeline, policy(profiles=False)) for e in fxs if isinstance(e, fx.SwitchClass)
    ]
    assert with_profiles == without
    assert with_profiles  # the classes did move, to the mobile uplink
    assert not switches(run(timeline))


def test_denied_fails_the_profile_and_holds_the_uplink_down() -> None:
    steps = run([*probes("mobile", True, 0, 5), (1.0, SERVING), (5.0, DENIED)])
    state = steps[-1][2]
    assert state.modems["mobile"].phase is Phase.SWITCHING  # fiber never came up: not covered
    assert state.uplinks["mobile"].health.value == "DOWN"
    assert state.uplinks["mobile"].cause.code in ("modem-denied", "profile-failover")
    [(t, sw)] = switches(steps)
    assert (t, sw.profile, sw.how, sw.plmn) == (5.0, "a-roam", "register", "20416")


def test_registered_on_a_network_the_profile_does_not_allow_fails_it() -> None:
    wrong = ev.ModemState("mobile", "roaming", "20416", "lte", 50, bearer=True)
    steps = run([(1.0, wrong), (2.0, ev.ProfileSwitched("mobile", "a-roam", True)), (3.0, wrong)])
    changes = [
        (e.profile, e.new, e.cause.code) for _, _, _, fxs in steps for e in fxs if isinstance(e, fx.ProfileChanged)
    ]
    assert changes[0] == ("a", "FAILED", "modem-wrong-network")
    assert changes[-1] == ("a-roam", "SERVING", "modem-serving")  # a-roam allows 20416


def test_searching_beyond_the_limit_fails_the_profile() -> None:
    steps = run([(0.0, ev.ModemState("mobile", "searching")), (25.0, ev.Tick())])
    failed = [e for _, _, _, fxs in steps for e in fxs if isinstance(e, fx.ProfileChanged) and e.new == "FAILED"]
    assert [(e.profile, e.cause.code) for e in failed] == [("a", "modem-searching")]
    assert switches(steps)[0][0] == 20.0  # at the limit, by the engine's own timer


def test_a_switch_never_answered_fails_at_twice_its_cost() -> None:
    steps = run([(0.0, DENIED), (100.0, ev.Tick())])
    changes = [
        (t, e.profile, e.new, e.cause.code) for t, _, _, fxs in steps for e in fxs if isinstance(e, fx.ProfileChanged)
    ]
    assert (10.0, "a-roam", "FAILED", "switch-timeout") in changes  # register: 5 s, doubled


def test_a_slot_switch_waits_while_every_class_is_fine_elsewhere() -> None:
    base = [
        *probes("fiber", True, 0, 60),
        (1.0, DENIED),
        (7.0, ev.ProfileSwitched("mobile", "a-roam", True)),
        (8.0, DENIED),
    ]
    held = run(base)
    assert [sw.profile for _, sw in switches(held)] == ["a-roam"]  # the register went ahead, the slot switch did not
    notices = [e for _, _, _, fxs in held for e in fxs if isinstance(e, fx.Alarm) and e.cause.code == "switch-deferred"]
    assert len(notices) == 1  # recorded once, not at every probe
    anyway = run(base, policy("any"))
    assert [(sw.profile, sw.how) for _, sw in switches(anyway)][:2] == [("a-roam", "register"), ("b", "slot")]
    waiting = run(base, policy("wait"))
    assert switches(waiting) == []
    # Once the fiber fails the uplink is needed and the held switch goes ahead.
    needed = run([*base, *probes("fiber", False, 60, 70)])
    assert [(t, sw.profile) for t, sw in switches(needed)][:2] == [
        (1.0, "a-roam"),
        (62.0, "b"),
    ]  # fiber down after 3 losses


def test_failback_waits_for_the_hold_down_and_backs_off() -> None:
    timeline: list[tuple[float, ev.Event]] = [
        (1.0, SERVING),
        (2.0, DENIED),  # a fails at 2: switch to a-roam
        (3.0, ev.ProfileSwitched("mobile", "a-roam", True)),
        (4.0, ev.ModemState("mobile", "roaming", "20416", bearer=True)),
        (101.0, ev.Tick()),  # before 2 + 100: no failback
        (102.0, ev.Tick()),
        (103.0, ev.ProfileSwitched("mobile", "a", True)),
        (104.0, DENIED),  # a fails again at 104: the next failback waits 2 x 100 s
        (105.0, ev.ProfileSwitched("mobile", "a-roam", True)),
        (106.0, ev.ModemState("mobile", "roaming", "20416", bearer=True)),
        (500.0, ev.Tick()),
    ]
    got = [(t, sw.profile, sw.cause.code) for t, sw in switches(run(timeline))]
    assert got[:4] == [
        (2.0, "a-roam", "profile-failover"),
        (102.0, "a", "profile-failback"),
        (104.0, "a-roam", "profile-failover"),
        (304.0, "a", "profile-failback"),
    ]


# -- properties -------------------------------------------------------------------------------------

_REGISTRATION = st.sampled_from(["home", "roaming", "searching", "denied", "idle", "unknown"])
modem_events = st.builds(
    ev.ModemState,
    st.just("mobile"),
    _REGISTRATION,
    st.sampled_from([None, "20408", "20416"]),
    st.just("lte"),
    st.integers(0, 100),
    st.booleans(),
    slot=st.sampled_from([None, 1, 2, 3]),  # 3: a slot no profile names
)
switch_answers = st.builds(
    ev.ProfileSwitched,
    st.just("mobile"),
    st.sampled_from(["a", "a-roam", "b"]),
    st.booleans(),
    unsupported=st.booleans(),
)
probe_events = st.builds(
    ev.ProbeResult, st.sampled_from(["fiber", "mobile"]), st.just("icmp:198.51.100.1"), st.booleans(), st.just(0.02)
)
timelines = st.lists(
    st.tuples(
        st.floats(0, 600, allow_nan=False), st.one_of(modem_events, switch_answers, probe_events, st.just(ev.Tick()))
    ),
    max_size=80,
)


def _covered(before: EngineState, after: EngineState, pol: Policy) -> bool:
    """As the engine judges it: the last assignments, and the other uplinks' health now."""
    for c in pol.classes.values():
        cur = before.classes[c.name]
        if cur.route != "via" or cur.uplink in (None, "mobile") or not usable(after, cur.uplink or ""):
            return False
    return True


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timelines, st.sampled_from(["wait", "register", "any"]))
def test_profile_invariants_hold_for_any_event_sequence(
    timeline: list[tuple[float, ev.Event]], while_covered: str
) -> None:
    pol = policy(while_covered)
    spec = pol.uplinks["mobile"].modem
    assert spec is not None
    for t, before, after, effects in run(timeline, pol):
        prev = before.modems.get("mobile")
        phase = prev.phase if prev is not None else Phase.UNKNOWN
        for e in effects:
            if isinstance(e, fx.ProfileChanged):
                # Every change is one the table lists, from where the machine was, with its cause.
                assert e.old == phase.value
                assert Phase(e.new) in PHASE_TRANSITIONS[phase]
                assert e.cause.code
                phase = Phase(e.new)
            if isinstance(e, fx.SwitchProfile):
                # Never two in flight: a switch starts only once the last one ended (answered or
                # timed out), which the ProfileChanged into SWITCHING just before it shows.
                assert phase is Phase.SWITCHING
        sw = [e for e in effects if isinstance(e, fx.SwitchProfile)]
        v = after.modems["mobile"]
        if sw:
            assert len(sw) == 1
            assert v.phase is Phase.SWITCHING and v.target == sw[0].profile
            # A modem found on a SIM no profile names is switched at once: that SIM serves nothing the policy knows.
            if _covered(before, after, pol) and sw[0].cause.code != "profile-foreign-sim":
                assert while_covered == "any" or (while_covered == "register" and sw[0].how == "register")
            if sw[0].cause.code == "profile-failback":
                assert prev is not None
                first = spec.profiles[0].name
                held = prev.adopted_at if prev.adopted_at is not None else prev.since
                assert t >= prev.failed_at.get(first, held) + spec.revert_after - 1e-9
        if v.phase is Phase.SWITCHING or (v.phase is Phase.FAILED and v.cause.code != "modem-no-data"):
            assert not usable(after, "mobile"), (v, after.uplinks["mobile"])
