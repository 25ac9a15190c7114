"""The scenario catalog against the lab: each scenario's expectations, with the measured values."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import simcheck

from failoverd import report as incident
from failoverd.policy import load_policy
from lab import scenario as sc
from lab.netns import existing
from lab.topology import ROOT, Lab

NAMES = sorted(sc.catalog())


@pytest.mark.scenario
@pytest.mark.parametrize("name", NAMES)
def test_scenario(lab: Lab, name: str, tmp_path: Path) -> None:
    """Each scenario's expectations; for simcheck.CHECKED, also that `failoverd simulate` detects the
    fault when the daemon did (one run of the lab serves both)."""
    scenario = sc.load_scenario(name)
    policy = load_policy(ROOT / scenario.policy)
    unknown = sc.unknown_classes(scenario, policy)
    assert not unknown, f"{name}: {scenario.policy} has no class {', '.join(unknown)}"
    run = simcheck.TimedRun(lab, scenario, policy, tmp_path, progress=lambda _: None)
    try:
        report = run.execute()
    finally:
        run.kill_daemon(signal.SIGKILL)
    (tmp_path / "report.json").write_text(json.dumps(report, indent=1))  # what was measured, when it fails
    failed = [e for e in report["expectations"] if not e["passed"]]
    assert not failed, f"{name}: " + "; ".join(
        f"{e['what']} of {e['class']}: measured {e['measured']}, wanted "
        + ", ".join(f"{k} {e[k]}" for k in ("max", "min", "equals", "uplinks", "uplink") if k in e)
        for e in failed
    )
    assert report["outage_ms"] is not None and report["timeline"]
    if name in simcheck.CHECKED:
        simcheck.daemon_detects_as_simulated(name, run, policy)
    incident_matches_the_run(tmp_path, report)


def incident_matches_the_run(out: Path, report: dict[str, Any]) -> None:
    """The incident report the run asked the daemon for (failoverctl report) tells what the run saw:
    every decision, and the critical stream's time on each uplink as its packets measured it."""
    reply = json.loads((out / "incident.json").read_text())
    metered = reply.get("metered", ())
    inc = incident.build(reply["records"], reply["since"], reply["until"], site=reply.get("site"), metered=metered)
    text = (out / "incident.md").read_text()
    # The period on the wall clock, less the steps it took (clock-step moves the daemon's wall clock):
    # the time on each uplink is counted on the monotonic clock.
    period = inc.until - inc.since - sum(r.get("delta_s", 0.0) for r in inc.by_kind("clock-step"))
    for cls, per in inc.time_on().items():
        # A restart in the run (daemon-crash) leaves no gap: the class stays where the kernel had it.
        assert sum(per.values()) == pytest.approx(period, rel=0.02), (cls, per, period)
    for d in inc.by_kind("decision"):
        where = d.get("uplink") or d.get("route")
        assert any(f"| {d['class']} | " in line and f"→ {where} |" in line for line in text.splitlines()), (d, text)
    on = inc.time_on().get("critical", {})
    carried = report["classes"].get("critical", {}).get("carried_by", {})
    rate = sc.load_scenario(report["scenario"]).traffic.critical
    if rate is None or not carried:
        return
    spans = sorted((s for s in inc.spans if s.cls == "critical"), key=lambda s: s.start)
    # Where the stream began: its time also holds the settling before the traffic.
    first = next((s.where for s in spans if s.via), None)
    used = inc.metered_bytes()
    # Traffic through the lab's modem is named by uplink and carrier (mobile/carrier-b); the report
    # knows the uplink.
    per_uplink: dict[str, int] = {}
    for name, packets in carried.items():
        per_uplink[name.split("/")[0]] = per_uplink.get(name.split("/")[0], 0) + packets
    for uplink, packets in per_uplink.items():
        if uplink in metered and packets >= 1000:
            # The meter service read the terminal's counters as the class moved onto and off it: at
            # least an IP and UDP header's worth per packet the stream sent through it went out.
            assert uplink in used and used[uplink][1] >= 28 * packets, (uplink, used, packets)
        seconds = packets / rate.rate
        if uplink == first or seconds < 2.0:
            continue
        assert on.get(uplink, 0.0) == pytest.approx(seconds, abs=max(1.5, 0.25 * seconds)), (uplink, on, carried)


def test_the_lab_has_a_namespace_for_each_node(lab: Lab) -> None:
    assert sorted(existing(lab.topo.prefix + "-")) == sorted(lab.topo.ns(n) for n in lab.spec.nodes)
