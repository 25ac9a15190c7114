"""Integration fixtures: a real gateway in network namespaces, removed after each test, pass or fail."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import GatewayLab


@pytest.fixture
def gwlab(tmp_path: Path) -> Iterator[GatewayLab]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates fo-* network namespaces")
    lab = GatewayLab(tmp_path).build()
    try:
        yield lab
    finally:
        lab.destroy()


# The tests that bring up the lab (containerlab/failoverd.clab.yml: namespaces fo-failoverd-*, fixed /tmp paths).
LAB_FILES = ("test_scenarios.py", "test_lab_dualstack.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.netns)
            if item.fspath.basename in LAB_FILES:
                item.add_marker(pytest.mark.lab)
