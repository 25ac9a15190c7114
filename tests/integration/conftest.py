"""Integration fixtures: a real gateway in network namespaces, removed after each test, pass or fail."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import GatewayLab

from lab.netns import existing
from lab.topology import Lab, load


@pytest.fixture
def gwlab(tmp_path: Path) -> Iterator[GatewayLab]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates fo-* network namespaces")
    lab = GatewayLab(tmp_path).build()
    try:
        yield lab
    finally:
        lab.destroy()


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The lab (containerlab/failoverd.clab.yml on namespaces), built once for every test that uses it:
    test_lab_dualstack.py's and the scenario catalog's take the same topology, and `lab up` costs
    seconds. What a test changes it undoes: test_lab_dualstack's routes go after each test, and each
    scenario clears the faults and purges the gateway before it runs and clears its faults after.
    (A scenario's daemon leaves its routes and rules behind, fail-static; the dualstack tests pass
    after one all the same.)"""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates fo-* network namespaces")
    lab = Lab(load())
    lab.up()
    try:
        yield lab
    finally:
        lab.down()
    # Said here, after the session's last test: taking the lab down leaves none of its namespaces.
    assert not existing(lab.topo.prefix + "-"), "lab down left namespaces behind"


# The tests that bring up the lab (containerlab/failoverd.clab.yml: namespaces fo-failoverd-*, fixed /tmp paths).
LAB_FILES = ("test_scenarios.py", "test_lab_dualstack.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.netns)
            if item.fspath.basename in LAB_FILES:
                item.add_marker(pytest.mark.lab)
