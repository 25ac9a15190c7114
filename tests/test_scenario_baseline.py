"""Expectations `of: baseline` measure the baseline run: its streams and final state, and also its decisions,
drills and alarms (switches, never_on, drill_verdict, warning_lead_s once read the main run's)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from failoverd.errors import PolicyError
from failoverd.policy import load_policy
from lab import scenario as sc
from lab.topology import ROOT

EXPECT = [
    {"what": "switches", "of": "baseline", "class": "critical", "max": 1},
    {"what": "never_on", "of": "baseline", "class": "critical", "uplink": "mobile-a"},
    {"what": "drill_verdict", "of": "baseline", "uplink": "sat", "equals": "fail"},
    {"what": "warning_lead_s", "of": "baseline", "class": "critical", "min": 5},
    {"what": "switches", "class": "critical", "min": 2},
    {"what": "drill_verdict", "uplink": "sat", "equals": "pass"},
]


CAUSE = {"code": "test"}


class FakeTopo:
    def sh(self, *_: str, **__: Any) -> SimpleNamespace:
        return SimpleNamespace(stdout="")  # no addresses: the streams below name their uplinks already


class FakeLab:
    topo = FakeTopo()

    def peer(self, node: str, iface: str) -> tuple[str, str]:
        return "isp", "down0"


def decision(mono: float, uplink: str | None, route: str = "via") -> dict[str, Any]:
    return {"kind": "decision", "mono": mono, "class": "critical", "uplink": uplink, "route": route, "cause": CAUSE}


def drill(mono: float, verdict: str) -> dict[str, Any]:
    return {"kind": "drill", "mono": mono, "uplink": "sat", "from": "checking", "to": "idle", "verdict": verdict,
            "cause": CAUSE}  # fmt: skip


def reported(run: sc.Run, history: list[dict[str, Any]], final_on: str) -> dict[str, Any]:
    traffic = {"critical": {"max_gap_ms": 5.0, "lost": 0, "received": 1000, "by_source": {final_on: 1000}}}
    final = {"classes": [{"name": "critical", "route": "via", "uplink": final_on}], "uplinks": []}
    return run.report(traffic, final, history, sc.Observer("unused"))


def test_expectations_of_the_baseline_measure_its_decisions_drills_and_alarms(tmp_path: Path) -> None:
    scenario = sc.ScenarioFile.model_validate(
        {"name": "t", "title": "t", "duration": 10, "baseline": "policies/lab.yaml", "expect": EXPECT}
    )
    policy = load_policy(ROOT / scenario.policy)
    lab: Any = FakeLab()
    base = sc.Run(lab, scenario, policy, tmp_path / "baseline", policy_file="policies/lab.yaml")
    base.t0 = 100.0
    # The baseline: its drill of sat failed, 6 s before critical lost its last route (its one decision).
    base_history = [
        drill(101.0, "fail"),
        {"kind": "alarm", "mono": 102.0, "cause": {"code": "drill-failed"}},
        decision(108.0, None, "unreachable"),
    ]
    main = sc.Run(lab, scenario, policy, tmp_path)
    main.t0 = 100.0
    main.base = base
    main.baseline = reported(base, base_history, "fiber")
    # The main run: critical to mobile-a and back, its drill passed, no alarm.
    history = [
        decision(103.0, "mobile-a"),
        decision(106.0, "fiber"),
        drill(101.0, "pass"),
    ]
    got = reported(main, history, "fiber")
    measured = [(e["what"], e.get("of"), e["measured"], e["passed"]) for e in got["expectations"]]
    assert measured == [
        ("switches", "baseline", 1, True),  # the unreachable route: the baseline's one decision
        ("never_on", "baseline", ["fiber"], True),
        ("drill_verdict", "baseline", "fail", True),
        ("warning_lead_s", "baseline", 6.0, True),
        ("switches", None, 2, True),
        ("drill_verdict", None, "pass", True),
    ], measured


def test_an_expectation_of_the_baseline_needs_a_baseline(tmp_path: Path) -> None:
    """Refused as the scenario loads, the file and the measure named, not at the end of a run."""
    path = tmp_path / "no-baseline.yaml"
    path.write_text(
        "name: no-baseline\ntitle: t\nduration: 5\n"
        "expect:\n  - {what: outage_ms, class: critical, max: 100}\n"
        "  - {what: switches, of: baseline, class: critical, max: 0}\n"
    )
    with pytest.raises(PolicyError) as err:
        sc.load_scenario(str(path))
    assert str(path) in str(err.value) and "expect.1 (switches)" in str(err.value), str(err.value)
