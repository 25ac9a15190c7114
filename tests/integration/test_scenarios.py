"""The scenario catalog against the lab: each scenario's expectations, with the measured values."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import scenario as sc
from lab.topology import Lab, load

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
    report = sc.run(lab, name, tmp_path, progress=lambda _: None)
    failed = [e for e in report["expectations"] if not e["passed"]]
    assert not failed, f"{name}: " + "; ".join(
        f"{e['what']} of {e['class']}: measured {e['measured']}, wanted "
        + ", ".join(f"{k} {e[k]}" for k in ("max", "min", "equals", "uplinks", "uplink") if k in e)
        for e in failed
    )
    assert report["outage_ms"] is not None and report["timeline"]


def test_lab_down_leaves_nothing(lab: Lab) -> None:
    from lab.netns import existing

    assert len(existing(lab.topo.prefix + "-")) == len(lab.spec.nodes)
