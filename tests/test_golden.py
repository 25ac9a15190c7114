"""Golden scenarios: numbered timelines replayed through the engine, with the decisions they must yield."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from failoverd.policy import load_policy
from failoverd.simulate import Simulation, Timeline

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = sorted((ROOT / "tests" / "golden").glob("[0-9]*.yaml"))


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load(path.read_text())
    return data


def _run(path: Path) -> tuple[list[dict[str, Any]], Simulation]:
    spec = _load(path)
    policy = load_policy(ROOT / spec["policy"])
    sim = Simulation(policy, Timeline.model_validate(spec["timeline"]))
    return sim.run(), sim


def _in(t: float, window: list[float]) -> bool:
    return window[0] - 1e-9 <= t <= window[1] + 1e-9


def _fmt(rows: list[dict[str, Any]]) -> str:
    keep = (
        "mono",
        "class",
        "uplink",
        "profile",
        "how",
        "route",
        "from",
        "to",
        "ok",
        "text",
        "action",
        "subject",
        "verdict",
        "check",
    )

    def line(r: dict[str, Any]) -> str:
        shown = [f"{k}={r[k]}" for k in keep if k in r]
        return "  " + ", ".join(shown + ([f"code={r['cause']['code']}"] if "cause" in r else []))

    return "\n".join(line(r) for r in rows)


def _check_ordered(kind: str, expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> None:
    assert len(actual) == len(expected), f"{kind}: expected {len(expected)}, got {len(actual)}:\n{_fmt(actual)}"
    for i, (exp, act) in enumerate(zip(expected, actual, strict=True)):
        where = f"{kind} #{i + 1}: expected {exp}, got\n{_fmt([act])}"
        if "t" in exp:
            assert _in(act["mono"], exp["t"]), where
        for key, value in exp.items():
            if key == "t":
                continue
            if key == "to" and kind == "decisions":
                assert act["uplink"] == value, where
            elif key == "cause":
                assert act["cause"]["code"] == value, where
            elif key == "text":
                assert value in act["text"], where
            else:
                assert act[key] == value, where


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden(path: Path) -> None:
    spec = _load(path)
    expect = spec["expect"]
    records, sim = _run(path)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_kind.setdefault(r["kind"], []).append(r)

    if "decisions" in expect:
        _check_ordered("decisions", expect["decisions"], by_kind.get("decision", []))
    if "replies" in expect:
        _check_ordered("replies", expect["replies"], by_kind.get("command", []))
    if "conntrack" in expect:
        _check_ordered("conntrack", expect["conntrack"], by_kind.get("conntrack", []))
    if "standby" in expect:
        _check_ordered("standby", expect["standby"], by_kind.get("standby", []))
    if "drills" in expect:
        _check_ordered("drills", expect["drills"], by_kind.get("drill", []))
    if "drill_checks" in expect:
        _check_ordered("drill_checks", expect["drill_checks"], by_kind.get("drill-check", []))
    if "profiles" in expect:
        _check_ordered("profiles", expect["profiles"], by_kind.get("profile", []))
    if "profile_switches" in expect:
        _check_ordered("profile_switches", expect["profile_switches"], by_kind.get("profile-switch", []))
    if "uplinks" in expect:
        named = {e["uplink"] for e in expect["uplinks"]}
        actual = [r for r in by_kind.get("uplink", []) if r["uplink"] in named]
        _check_ordered("uplinks", expect["uplinks"], actual)
    for exp in expect.get("alarms", []):
        found = [
            a
            for a in by_kind.get("alarm", [])
            if a["subject"] == exp["subject"]
            and a["cause"]["code"] == exp["cause"]
            and exp.get("text", "") in a["cause"]["text"]
        ]
        assert found, f"no alarm {exp}; alarms were:\n{_fmt(by_kind.get('alarm', []))}"
    for exp in expect.get("clock", []):
        found = [c for c in by_kind.get("clock", []) if c["to"] == exp["to"] and c["distrust"] == exp["distrust"]]
        assert found, f"no clock reaction {exp}; got {by_kind.get('clock')}"
    for uplink, classes in expect.get("never_on", {}).items():
        bad = [d for d in by_kind.get("decision", []) if d["uplink"] == uplink and d["class"] in classes]
        assert not bad, f"classes {classes} must never use {uplink}:\n{_fmt(bad)}"
    for cls, limit in expect.get("max_switches", {}).items():
        moves = [d for d in by_kind.get("decision", []) if d["class"] == cls]
        assert len(moves) <= limit, f"{cls} switched {len(moves)} times (at most {limit}):\n{_fmt(moves)}"
    assert sim.state is not None
    if "active_alarms" in expect:  # the alarms still raised when the timeline ends
        assert sorted(sim.state.alarms) == sorted(expect["active_alarms"])
    final = {name: c.uplink for name, c in sim.state.classes.items()}
    assert final == expect["final"]


def test_every_golden_file_is_run() -> None:
    assert len(GOLDEN) >= 11


def test_the_no_prewarm_baseline_is_the_emergency_policy_with_prewarm_off() -> None:
    """Golden 19 measures 18's chain without pre-warm: its policy must not drift from emergency.yaml."""
    baseline = (ROOT / "tests/golden/policies/emergency-no-prewarm.yaml").read_text().splitlines()
    emergency = (ROOT / "policies/emergency.yaml").read_text().splitlines()
    body = baseline[2:]  # after its own two-line header
    differ = [(a, b) for a, b in zip(emergency, body, strict=True) if a != b]
    assert differ == [(a, a.replace("prewarm: true", "prewarm: false")) for a, _ in differ]
    assert len(differ) == 1, differ
