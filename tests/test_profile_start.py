"""A modem found on another profile at start (engine/profiles.py `in_use`), and switches ModemManager cannot make."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_profiles import POLICY, TEMPLATE, policy, probes, run, switches

from failoverd.cli import main, modem_warnings
from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.modemstate import Phase
from failoverd.engine.profiles import in_use
from failoverd.policy import parse_policy_text


def changes(steps: list) -> list[tuple[str, str, str, str]]:  # type: ignore[type-arg]
    return [
        (e.profile, e.old, e.new, e.cause.code)
        for _, _, _, fxs in steps
        for e in fxs
        if isinstance(e, fx.ProfileChanged)
    ]


def notices(steps: list, code: str) -> list[fx.Alarm]:  # type: ignore[type-arg]
    return [e for _, _, _, fxs in steps for e in fxs if isinstance(e, fx.Alarm) and e.cause.code == code]


def test_a_modem_on_slot_2_is_taken_as_it_is_not_switched_back() -> None:
    """After a restart: slot 2, registered on carrier-b with a bearer. Profile b, SERVING, no switch."""
    on_b = ev.ModemState("mobile", "home", "20416", "lte", 60, bearer=True, slot=2, iccid="8931160000000000002")
    steps = run([*probes("mobile", True, 0, 5), (0.5, on_b)])
    v = steps[-1][2].modems["mobile"]
    assert (v.profile, v.phase, v.adopted_at) == ("b", Phase.SERVING, 0.5)
    assert changes(steps) == [("b", "UNKNOWN", "SERVING", "modem-serving")]
    assert not switches(steps)
    [notice] = notices(steps, "profile-adopted")
    assert notice.severity == "info" and "SIM slot 2" in notice.cause.text and "20416" in notice.cause.text
    assert dict(notice.cause.evidence)["profile"] == "b"


def test_the_same_sim_on_the_partner_network_is_the_roaming_profile() -> None:
    roaming = ev.ModemState("mobile", "roaming", "20416", "lte", 40, bearer=True, slot=1)
    profile, sim = in_use(POLICY.uplinks["mobile"].modem, roaming)  # type: ignore[arg-type]
    assert (profile.name if profile else None, sim) == ("a-roam", "SIM slot 1")
    steps = run([(1.0, roaming)])
    assert changes(steps) == [("a-roam", "UNKNOWN", "SERVING", "modem-serving")]
    assert not switches(steps)  # a would fail it as the wrong network and re-register: needless


def test_a_modem_still_searching_on_slot_1_is_the_first_profile_without_a_notice() -> None:
    steps = run([(1.0, ev.ModemState("mobile", "searching", slot=1))])
    assert changes(steps) == [("a", "UNKNOWN", "ATTACHING", "modem-attaching")]
    assert not notices(steps, "profile-adopted")


def test_a_report_that_names_no_sim_leaves_the_first_profile() -> None:
    steps = run([(1.0, ev.ModemState("mobile", "home", "20416", bearer=True))])
    assert changes(steps)[0] == ("a", "UNKNOWN", "FAILED", "modem-wrong-network")  # as before: a, judged


def test_a_sim_no_profile_names_is_switched_to_the_first_profile_at_once() -> None:
    steps = run([*probes("fiber", True, 0, 5), (2.0, ev.ModemState("mobile", "home", "26201", bearer=True, slot=3))])
    [(t, sw)] = switches(steps)
    assert (t, sw.profile, sw.how, sw.plmn, sw.cause.code) == (2.0, "a", "slot", "20408", "profile-foreign-sim")
    assert "SIM slot 3" in sw.cause.text
    assert steps[-1][2].modems["mobile"].phase is Phase.SWITCHING


def test_failback_from_an_adopted_profile_waits_revert_after_from_the_start() -> None:
    on_b = ev.ModemState("mobile", "home", "20416", "lte", 60, bearer=True, slot=2)
    steps = run([(1.0, on_b), (99.0, ev.Tick()), (102.0, ev.Tick())], policy("any"))
    [(t, sw)] = switches(steps)
    assert (t, sw.profile, sw.how, sw.cause.code) == (101.0, "a", "slot", "profile-failback")
    assert "the start found the modem on another profile" in sw.cause.text


# The same profiles on eSIM: a and a-roam on one eSIM profile, b on another.
ESIM = (
    TEMPLATE.replace("slot: 1,", 'esim: "8931080000000000011",')
    .replace("slot: 2,", 'esim: "8931160000000000022",')
    .replace("WHILE", "any")
)


def test_an_esim_profile_is_known_by_its_iccid() -> None:
    pol = parse_policy_text(ESIM, "<esim>")
    on_b = ev.ModemState("mobile", "home", "20416", bearer=True, slot=1, iccid="8931160000000000022F", esim=True)
    steps = run([(1.0, on_b)], pol)
    assert changes(steps) == [("b", "UNKNOWN", "SERVING", "modem-serving")]
    assert "eSIM profile 8931160000000000022F" in notices(steps, "profile-adopted")[0].cause.text


def test_a_switch_modemmanager_cannot_make_fails_the_target_with_its_cause() -> None:
    """Between eSIM profiles (ModemManager 1.20 cannot enable one): answered unsupported, the next is tried."""
    pol = parse_policy_text(ESIM, "<esim>")
    denied = ev.ModemState("mobile", "denied", slot=1, iccid="8931080000000000011", esim=True)
    answer = ev.ProfileSwitched("mobile", "b", False, "ModemManager cannot enable eSIM profile ...", unsupported=True)
    steps = run([(1.0, denied), (2.0, ev.ProfileSwitched("mobile", "a-roam", True)), (3.0, denied), (4.0, answer)], pol)
    assert ("b", "SWITCHING", "FAILED", "switch-unsupported") in changes(steps)
    state = steps[-1][2]
    assert state.uplinks["mobile"].health.value == "DOWN"
    assert [sw.profile for _, sw in switches(steps)] == ["a-roam", "b"]  # a and a-roam failed within retry_after


def test_check_warns_of_profiles_that_need_an_esim_profile_enabled() -> None:
    assert modem_warnings(POLICY) == []
    [warning] = modem_warnings(parse_policy_text(ESIM, "<esim>"))
    assert 'uplink "mobile"' in warning and "b (8931160000000000022)" in warning
    assert "cannot enable an eSIM profile" in warning and "switch-unsupported" in warning
    assert "two eSIM profiles on one eUICC cannot both be reached" in warning


def test_failoverd_check_prints_the_esim_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "esim.yaml"
    path.write_text(ESIM)
    assert main(["check", "--quiet", "--user", "", str(path)]) == 0
    assert f'{path}: warning: uplink "mobile": profiles a (8931080000000000011)' in capsys.readouterr().err
