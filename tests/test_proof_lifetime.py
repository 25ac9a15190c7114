"""How long a proof of working lasts: verify.within and a drill's valid_for are one number."""

from __future__ import annotations

from typing import Any

import pytest

from failoverd.engine.redundancy import redundancy
from failoverd.errors import PolicyError
from failoverd.observe.status import drill_rows
from failoverd.policy import parse_policy_text
from failoverd.policy.model import Policy
from failoverd.simulate import Simulation, Timeline

SITE = """
site: proofs
uplinks:
  - name: fiber
    interface: eth1
    next_hop: 198.51.100.1
    probes: [{kind: icmp, target: 192.0.2.10, interval: 500ms}]
  - name: sat
    interface: sat0
    next_hop: 203.0.113.1
    standby: {mode: cold, activate: {run: [/bin/true]}, activation_time: 30s}
    probes: [{kind: icmp, target: 192.0.2.10, interval: 1s, timeout: 2s}]
VERIFY
classes:
  - {name: vital, path: [fiber, sat]}
drills:
  - {uplink: sat, every: EVERY, rounds: 3, retry_after: 5sVALID}
"""


def _policy(verify: str | None = None, valid_for: str | None = None, every: str = "1h") -> Policy:
    text = SITE.replace("VERIFY", f"    verify: {verify}" if verify else "").replace("EVERY", every)
    return parse_policy_text(text.replace("VALID", f", valid_for: {valid_for}" if valid_for else ""), "proofs.yaml")


def test_valid_for_follows_verify_within() -> None:
    policy = _policy(verify="{within: 2h, alarm: critical}")
    assert policy.drills["sat"].valid_for == 7200.0
    assert policy.uplinks["sat"].verify is not None and policy.uplinks["sat"].verify.within == 7200.0
    assert _policy(verify="{within: 2h}", valid_for="2h").drills["sat"].valid_for == 7200.0  # equal: fine


def test_a_drill_s_valid_for_is_the_uplink_s_proof_lifetime_without_an_alarm() -> None:
    sat = _policy(valid_for="90s").uplinks["sat"]
    assert sat.verify is not None and (sat.verify.within, sat.verify.alarm) == (90.0, None)
    default = _policy(every="10m")  # neither given: the drill's default, 1.5 intervals
    assert default.drills["sat"].valid_for == 900.0
    assert default.uplinks["sat"].verify is not None and default.uplinks["sat"].verify.within == 900.0
    assert _policy().uplinks["fiber"].verify is None  # not drilled, not asked: a proof lasts


def test_contradictory_settings_are_refused_with_their_place() -> None:
    with pytest.raises(PolicyError) as err:
        _policy(verify="{within: 7d}", valid_for="8d")
    assert 'proofs.yaml:17:69: drills.0.valid_for: drill of "sat": valid_for (691200s) contradicts' in str(err.value)


def _after_pass(policy: Policy, duration: float) -> tuple[Simulation, list[dict[str, Any]]]:
    timeline = Timeline.model_validate(
        {"duration": duration, "world": {"sat": {"rtt_ms": 600, "standby": {"activation": "ok", "delay": 3}}}}
    )
    sim = Simulation(policy, timeline)
    return sim, sim.run()


def test_redundancy_and_drill_status_agree_when_a_drill_s_proof_runs_out() -> None:
    """Before, redundancy read only verify.within (none here: a proof lasted for ever) while the
    drill's status read valid_for: the drill said "not verified" of a backup redundancy counted on."""
    policy = _policy(valid_for="60s")
    sim, records = _after_pass(policy, 40.0)
    passed = [r["mono"] for r in records if r["kind"] == "drill" and r.get("verdict") == "pass"]
    assert len(passed) == 1 and passed[0] < 20.0
    for duration, proven in ((passed[0] + 59.0, True), (passed[0] + 61.0, False)):
        sim, records = _after_pass(policy, duration)
        assert sim.state is not None
        r = redundancy(policy.classes["vital"], policy, sim.state)
        assert ("sat" in r.standby, "sat" in r.unproven) == (proven, not proven), duration
        (row,) = drill_rows(policy, sim.state, sim.state.now)
        assert row["verified"] is proven
        assert not [a for a in records if a["kind"] == "alarm" and a["cause"]["code"] in ("unverified", "verified")]
