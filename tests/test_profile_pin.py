"""An operator's profile pin (`failoverctl modem use`): accepted or refused, held against failures and
failback, ended by expiry and release, kept across a restart, and the same command everywhere."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keys import operator_keys
from test_profiles import (
    DENIED,
    POLICY,
    SERVING,
    TEMPLATE,
    modem_events,
    policy,
    probe_events,
    probes,
    run,
    switch_answers,
    switches,
)

from failoverd.control.commands import dispatch, to_event, validate
from failoverd.control.engineonly import EngineGateway
from failoverd.control.mqtt import Fleet
from failoverd.control.signing import load_private_key, sign, site_dest
from failoverd.ctl import build_parser, render_status, to_request
from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.decide import usable
from failoverd.engine.modemstate import Phase
from failoverd.engine.state import EngineState, Override, restored_state
from failoverd.engine.step import step
from failoverd.observe.status import override_rows
from failoverd.policy import parse_policy_text
from failoverd.statedir import StateDir, boot_id, load_overrides, save_overrides

Steps = list[tuple[float, EngineState, EngineState, tuple[fx.Effect, ...]]]


def pin(profile: str, *, ttl: float | None = 3600.0, force: bool = False, uplink: str = "mobile") -> ev.PinProfile:
    return ev.PinProfile("r", uplink, profile, "carrier a maintenance", ttl, force, "noc")


def replies(steps: Steps) -> list[fx.CommandReply]:
    return [e for _, _, _, fxs in steps for e in fxs if isinstance(e, fx.CommandReply)]


def changes(steps: Steps) -> list[tuple[float, str, str, str]]:
    return [
        (t, e.profile, e.new, e.cause.code) for t, _, _, fxs in steps for e in fxs if isinstance(e, fx.ProfileChanged)
    ]


# -- accept and refuse ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "refusal"),
    [
        (pin("b", uplink="lte9"), 'unknown uplink "lte9" (uplinks: fiber, mobile)'),
        (pin("b", uplink="fiber"), 'uplink "fiber" has no modem profiles (uplinks with profiles: mobile)'),
        (pin("c"), 'uplink "mobile" has no profile "c" (profiles: a, a-roam, b)'),
        (replace(pin("b"), reason="  "), "a reason is required"),
        (pin("b", ttl=2 * 86400.0), "exceeds control.max_override (86400s)"),
        (pin("b", ttl=0.0), "the duration must be positive"),
    ],
)
def test_a_pin_is_refused_with_its_reason(command: ev.PinProfile, refusal: str) -> None:
    steps = run([(1.0, SERVING), (2.0, command)])
    [reply] = replies(steps)
    assert not reply.ok and refusal in reply.text, reply.text
    assert steps[-1][2].overrides == ()
    assert switches(steps) == []


def test_a_pin_switches_to_its_profile_at_once_whatever_while_covered_says() -> None:
    # The fiber carries every class and while_covered is `wait`: no switch of the engine's own goes
    # ahead, but the operator's does, with a cause that names the override.
    steps = run([*probes("fiber", True, 0, 10), (1.0, SERVING), (5.0, pin("b"))], policy("wait"))
    [reply] = replies(steps)
    assert reply.ok and reply.override == "o1"
    assert reply.text == "override o1: mobile on profile b for 3600s"
    [(t, sw)] = switches(steps)
    assert (t, sw.profile, sw.how, sw.plmn, sw.cause.code) == (5.0, "b", "slot", "20416", "profile-pinned")
    assert "operator override o1: 'carrier a maintenance' by noc" in sw.cause.text
    assert ("override", "o1") in sw.cause.evidence
    state = steps[-1][2]
    [o] = state.overrides
    assert (o.kind, o.uplink, o.profile, o.by, o.expires) == ("profile", "mobile", "b", "noc", 3605.0)
    assert state.uplinks["mobile"].cause.code == "profile-pinned"  # DOWN while the modem switches
    assert state.active_override("profile", "mobile") == o


def test_pinning_the_profile_in_use_switches_nothing_and_a_new_pin_replaces_the_old() -> None:
    steps = run([(1.0, SERVING), (2.0, pin("a")), (3.0, pin("a-roam"))])
    first, second = replies(steps)
    assert first.ok and first.text.endswith("; the modem uses it already")
    assert second.ok and "(replaces o1)" in second.text
    assert [o.id for o in steps[-1][2].overrides] == ["o2"]
    assert [(t, sw.profile, sw.how) for t, sw in switches(steps)] == [(3.0, "a-roam", "register")]


def test_a_profile_the_engine_holds_failed_needs_force() -> None:
    # a is denied at 2 and the engine moves to a-roam; pinning a again within retry_after is refused.
    base: list[tuple[float, ev.Event]] = [
        (1.0, SERVING),
        (2.0, DENIED),
        (3.0, ev.ProfileSwitched("mobile", "a-roam", True)),
        (4.0, ev.ModemState("mobile", "roaming", "20416", bearer=True)),
    ]
    refused = replies(run([*base, (10.0, pin("a"))]))[0]
    assert not refused.ok
    assert "profile a failed 8s ago" in refused.text and "add --force to pin it anyway" in refused.text
    # Refused during the switch away from it too, and when the active profile failed (the fiber
    # carries everything and while_covered is `wait`: it stays FAILED).
    [leaving] = replies(run([(1.0, DENIED), (3.0, pin("a"))]))
    assert not leaving.ok and "profile a failed 2s ago" in leaving.text
    [failed] = replies(run([*probes("fiber", True, 0, 10), (5.0, DENIED), (6.0, pin("a"))], policy("wait")))
    assert not failed.ok and "profile a has failed (modem-denied" in failed.text
    forced = run([*base, (10.0, pin("a", force=True))])
    assert replies(forced)[0].ok and forced[-1][2].overrides[0].force
    assert [(t, sw.profile, sw.cause.code) for t, sw in switches(forced)][-1] == (10.0, "a", "profile-pinned")


# -- the pin holds ----------------------------------------------------------------------------------


def test_a_failed_pinned_profile_is_not_left_and_holds_the_uplink_down() -> None:
    steps = run(
        [
            (1.0, SERVING),
            (2.0, pin("b")),
            (14.0, ev.ProfileSwitched("mobile", "b", True)),
            (15.0, DENIED),
            *probes("mobile", True, 16, 30),
            (500.0, ev.Tick()),  # far beyond retry_after and revert_after
        ]
    )
    assert [(t, sw.profile) for t, sw in switches(steps)] == [(2.0, "b")]
    assert (15.0, "b", "FAILED", "modem-denied") in changes(steps)
    state = steps[-1][2]
    assert state.modems["mobile"].profile == "b" and state.modems["mobile"].phase is Phase.FAILED
    u = state.uplinks["mobile"]
    assert u.health.value == "DOWN" and not usable(state, "mobile")
    assert u.cause.code == "profile-pinned"
    assert "pinned by override o1" in u.cause.text and "network rejected" in u.cause.text
    assert ("failure", "modem-denied") in u.cause.evidence
    notices = [e for _, _, _, fxs in steps for e in fxs if isinstance(e, fx.Alarm) and e.cause.code == "pinned-failed"]
    assert len(notices) == 1  # said once, not at every probe


def test_a_switch_that_fails_to_the_pinned_profile_leaves_it_pinned() -> None:
    steps = run(
        [(1.0, SERVING), (2.0, pin("b")), (4.0, ev.ProfileSwitched("mobile", "b", False, "no SIM")), (300.0, ev.Tick())]
    )
    assert [sw.profile for _, sw in switches(steps)] == ["b"]
    assert steps[-1][2].modems["mobile"].cause.code == "switch-failed"
    assert steps[-1][2].uplinks["mobile"].cause.code == "profile-pinned"


def test_a_pin_holds_against_failback() -> None:
    # a-roam is not the first profile: a serving a-roam would go back to a (it never failed) at once.
    timeline: list[tuple[float, ev.Event]] = [
        (1.0, SERVING),
        (2.0, pin("a-roam")),
        (3.0, ev.ProfileSwitched("mobile", "a-roam", True)),
        (4.0, ev.ModemState("mobile", "roaming", "20416", bearer=True)),
        (400.0, ev.Tick()),
    ]
    steps = run(timeline)
    assert [sw.profile for _, sw in switches(steps)] == ["a-roam"]
    assert steps[-1][2].modems["mobile"].phase is Phase.SERVING


def test_a_pin_during_a_switch_waits_for_it_to_end() -> None:
    steps = run([(1.0, DENIED), (1.5, pin("b")), (3.0, ev.ProfileSwitched("mobile", "a-roam", True))])
    assert "once the switch to a-roam in flight ends" in replies(steps)[0].text
    assert [(t, sw.profile, sw.cause.code) for t, sw in switches(steps)] == [
        (1.0, "a-roam", "profile-failover"),
        (3.0, "b", "profile-pinned"),
    ]


# -- it ends ----------------------------------------------------------------------------------------

FAILED_PIN: list[tuple[float, ev.Event]] = [
    (1.0, SERVING),
    (2.0, pin("b", ttl=60.0)),
    (14.0, ev.ProfileSwitched("mobile", "b", True)),
    (15.0, DENIED),
]


def test_when_the_pin_expires_the_engine_plans_again() -> None:
    steps = run([*FAILED_PIN, (200.0, ev.Tick())])
    # At its expiry (2 + 60, the engine's own timer) b, failed, is left for a (wrapping round).
    assert [(t, sw.profile, sw.cause.code) for t, sw in switches(steps)][:2] == [
        (2.0, "b", "profile-pinned"),
        (62.0, "a", "profile-failover"),
    ]
    expired = [
        e for t, _, _, fxs in steps for e in fxs if isinstance(e, fx.Alarm) and e.cause.code == "override-expired"
    ]
    assert len(expired) == 1 and "mobile on profile b" in expired[0].cause.text
    assert steps[-1][2].overrides == ()


def test_release_ends_the_pin_like_any_override() -> None:
    steps = run([*FAILED_PIN, (30.0, ev.Release("r", "o1", "noc"))])
    assert replies(steps)[-1].ok and replies(steps)[-1].text.startswith("released o1 (mobile on profile b")
    assert [(t, sw.profile) for t, sw in switches(steps)] == [(2.0, "b"), (30.0, "a")]
    everything = run([*FAILED_PIN, (30.0, ev.Release("r", None, "noc"))])
    assert [(t, sw.profile) for t, sw in switches(everything)] == [(2.0, "b"), (30.0, "a")]


def test_a_reload_that_drops_the_pinned_profile_drops_the_pin() -> None:
    steps = run([(1.0, SERVING), (2.0, pin("b"))])
    state = steps[-1][2]
    fewer = TEMPLATE.replace("WHILE", "register").replace(
        '      - {name: b, slot: 2, apn: internet, plmns: ["20416"]}\n', ""
    )
    pol = parse_policy_text(fewer, "<fewer>")
    after, effects = step(state, ev.PolicyReloaded(), pol, 3.0)
    assert after.overrides == ()
    assert any(isinstance(e, fx.Alarm) and e.cause.code == "override-dropped" for e in effects)


# -- across a restart -------------------------------------------------------------------------------


def test_a_pin_survives_a_restart_and_is_honoured(tmp_path: Path) -> None:
    state = run([(1.0, SERVING), (2.0, pin("a-roam"))])[-1][2]
    sd = StateDir(tmp_path)
    save_overrides(sd, state.overrides, state.override_seq)
    saved = json.loads((tmp_path / "overrides.json").read_text())
    assert saved["overrides"][0]["profile"] == "a-roam"
    overrides, seq, note = load_overrides(sd)
    assert (overrides, seq, note) == (state.overrides, 1, "")
    # The new run starts on the first profile as far as it knows; the pin moves it to a-roam.
    restarted = restored_state(POLICY, 10.0, {}, overrides, seq)
    after, effects = step(restarted, ev.ModemState("mobile", "home", "20408", bearer=True), POLICY, 11.0)
    assert after.overrides == overrides
    [sw] = [e for e in effects if isinstance(e, fx.SwitchProfile)]
    assert (sw.profile, sw.cause.code) == ("a-roam", "profile-pinned")
    # A pin whose profile the policy no longer has is not restored.
    gone = replace(overrides[0], profile="z")
    assert restored_state(POLICY, 10.0, {}, (gone,), seq).overrides == ()


def test_an_override_file_of_an_earlier_version_still_loads(tmp_path: Path) -> None:
    old = {"kind": "drain", "cls": None, "uplink": "fiber", "reason": "r", "by": "t", "created": 1.0, "expires": 9.0}
    doc = {"boot_id": boot_id(), "override_seq": 4, "overrides": [{"id": "o4", **old, "force": False}]}
    (tmp_path / "overrides.json").write_text(json.dumps(doc))
    overrides, seq, note = load_overrides(StateDir(tmp_path))
    assert overrides == (Override("o4", "drain", None, "fiber", "r", "t", 1.0, 9.0),) and seq == 4 and note == ""
    assert overrides[0].profile is None


# -- one command everywhere -------------------------------------------------------------------------


def test_failoverctl_modem_use_is_the_table_command() -> None:
    argv = ["modem", "use", "mobile", "--profile", "b", "--for", "2h", "--reason", "carrier a works", "--force"]
    req = to_request(build_parser().parse_args(argv))
    assert {k: v for k, v in req.items() if k != "by"} == {
        "cmd": "modem-use",
        "uplink": "mobile",
        "profile": "b",
        "for": "2h",
        "reason": "carrier a works",
        "force": True,
    }
    _, args = validate(req)
    assert to_event("modem-use", {**args, "by": "noc"}, "r9") == ev.PinProfile(
        "r9", "mobile", "b", "carrier a works", 7200.0, True, "noc"
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["modem", "use", "mobile", "--reason", "x"])  # the profile is required


async def test_a_pin_through_the_table_shows_in_status() -> None:
    g = EngineGateway(TEMPLATE.replace("WHILE", "register"))
    reply = await dispatch(g, {"cmd": "modem-use", "uplink": "mobile", "profile": "b", "reason": "r", "by": "noc"})
    assert reply["ok"] and reply["override"] == "o1", reply
    refused = await dispatch(
        g, {"cmd": "modem-use", "uplink": "mobile", "profile": "b", "reason": "r"}, may_change=False
    )
    assert not refused["ok"] and "may only read" in refused["error"]
    [row] = override_rows(g.state, g.state.now)
    assert (row["kind"], row["uplink"], row["profile"]) == ("profile", "mobile", "b")
    st = {
        "site": "s",
        "policy": "p.yaml",
        "pid": 1,
        "uptime_s": 5,
        "clock": {"state": "sane"},
        "uplinks": [],
        "classes": [],
        "overrides": [row],
    }
    assert "o1   mobile on profile b  'r' by noc" in render_status(st, tty=False)


def test_a_pin_waits_for_the_modem_to_report_at_all() -> None:
    """Without a word from the modem (no modem service, or just started) a switch would go unanswered
    and time out with the uplink DOWN: the pin waits for the first report."""
    quiet = run([*probes("mobile", True, 0, 40), (1.0, pin("b")), (39.0, ev.Tick())])
    [reply] = replies(quiet)
    assert reply.ok and "the switch waits for its first report" in reply.text
    assert switches(quiet) == []
    assert quiet[-1][2].uplinks["mobile"].health.value == "UP"
    heard = run([*probes("mobile", True, 0, 40), (1.0, pin("b")), (20.0, SERVING)])
    assert [(t, sw.profile) for t, sw in switches(heard)] == [(20.0, "b")]


async def test_a_signed_pin_over_mqtt_names_its_key(tmp_path: Path) -> None:
    key, keys = operator_keys(tmp_path / "k", "noc")
    text = TEMPLATE.replace("WHILE", "register") + f"control: {{mqtt: {{enabled: true, keys_file: {keys}}}}}\n"
    g = EngineGateway(text)
    fleet = Fleet(g, g.policy.control.mqtt, StateDir(tmp_path))
    req = {"cmd": "modem-use", "uplink": "mobile", "profile": "b", "for": "2h", "reason": "outage", "id": "m1"}
    payload = json.dumps(sign(req, "noc", load_private_key(key), time.time(), site_dest("failoverd", "profiles")))
    reply = await fleet.handle(fleet.cmd_topic, payload.encode())
    assert reply is not None and reply["ok"] and reply["override"] == "o1", reply
    [o] = g.state.overrides
    assert (o.kind, o.profile, o.by) == ("profile", "b", "mqtt:noc")
    assert o.expires - o.created == pytest.approx(7200.0)  # the fake steps the engine on time.monotonic()


# -- properties -------------------------------------------------------------------------------------

pins = st.builds(
    ev.PinProfile,
    st.just("p"),
    st.just("mobile"),
    st.sampled_from(["a", "a-roam", "b"]),
    st.just("why"),
    st.sampled_from([30.0, 300.0]),
    st.booleans(),
)
releases = st.builds(ev.Release, st.just("p"), st.sampled_from([None, "o1", "o2", "o3"]))
pin_timelines = st.lists(
    st.tuples(
        st.floats(0, 600, allow_nan=False),
        st.one_of(modem_events, switch_answers, probe_events, pins, releases, st.just(ev.Tick())),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pin_timelines)
def test_while_a_pin_holds_the_modem_moves_only_towards_it(timeline: list[tuple[float, ev.Event]]) -> None:
    for _, before, after, effects in run(timeline):
        held = after.active_override("profile", "mobile")
        v = after.modems["mobile"]
        for e in effects:
            if isinstance(e, fx.SwitchProfile) and held is not None:
                assert e.profile == held.profile and e.cause.code == "profile-pinned", (e, held)
        if held is None:
            continue
        # Pinned and not switching: on the pinned profile, unless a switch to it is still to come
        # (one in flight elsewhere ended this step, or the modem has not reported yet).
        was = before.modems.get("mobile")
        if v.phase is Phase.FAILED and v.profile == held.profile and v.cause.code != "modem-no-data":
            assert after.uplinks["mobile"].cause.code == "profile-pinned" or after.uplinks["mobile"].since == after.now
        # (The modem's first report may show it on another profile: the view takes that, then switches.)
        if was is not None and was.profile == held.profile and was.phase not in (Phase.SWITCHING, Phase.UNKNOWN):
            pinned_before = before.active_override("profile", "mobile")
            if pinned_before is not None and pinned_before.profile == held.profile:
                assert v.profile == held.profile and v.target in (None, held.profile), (was, v)
