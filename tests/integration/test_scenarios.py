"""The scenario catalog against the lab: each scenario's expectations, with the measured values."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import simcheck

from failoverd.policy import load_policy
from lab import scenario as sc
from lab.topology import ROOT, Lab, load

NAMES = sorted(sc.catalog())


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates fo-* network namespaces")
    lab = Lab(load())
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


@pytest.mark.scenario
@pytest.mark.parametrize("name", NAMES)
def test_scenario(lab: Lab, name: str, tmp_path: Path) -> None:
    """Each scenario's expectations; for simcheck.CHECKED, also that `failoverd simulate` detects the
    fault when the daemon did (one run of the lab serves both)."""
    scenario = sc.load_scenario(name)
    policy = load_policy(ROOT / scenario.policy)
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


def test_lab_down_leaves_nothing(lab: Lab) -> None:
    from lab.netns import existing

    assert len(existing(lab.topo.prefix + "-")) == len(lab.spec.nodes)
