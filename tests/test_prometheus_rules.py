"""The shipped alerting rules: valid, tested with promtool, and written against metrics the daemon exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_metrics import POLICY, cut_fiber

from failoverd.observe.metrics import render
from failoverd.observe.snapshot import Snapshot

RULES = Path(__file__).resolve().parent.parent / "contrib" / "prometheus"
promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian's prometheus) is installed by bootstrap"
)


@promtool
def test_rules_are_valid_and_pass_their_unit_tests() -> None:
    r = subprocess.run(
        ["promtool", "check", "rules", "failoverd-rules.yml"], cwd=RULES, capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(
        ["promtool", "test", "rules", "failoverd-rules.test.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_metric_the_rules_and_their_tests_name_is_exported() -> None:
    """A renamed metric would leave a rule that never fires, and its test would still pass on made-up series."""
    state, _ = cut_fiber()
    exported = {
        s.name
        for family in text_string_to_metric_families(render(Snapshot(POLICY, state, mono=12.0)).decode())
        for s in family.samples
    }
    named = set()
    for f in ("failoverd-rules.yml", "failoverd-rules.test.yml"):
        named |= set(re.findall(r"\bfailoverd_[a-z_]+\b", (RULES / f).read_text()))
    assert named and named <= exported, sorted(named - exported)


DASHBOARD = RULES.parent / "grafana" / "failoverd.json"


def _panel_queries() -> list[str]:
    import json

    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p["targets"]]


@promtool
def test_the_dashboards_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each panel's query, checked by promtool as a recording rule (the parser Prometheus itself uses)."""
    import json

    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"panel_{i}", "expr": q} for i, q in enumerate(_panel_queries())],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    r = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_metric_the_dashboard_names_is_exported() -> None:
    state, _ = cut_fiber()
    exported = {
        s.name
        for family in text_string_to_metric_families(render(Snapshot(POLICY, state, mono=12.0)).decode())
        for s in family.samples
    }
    named = {m for q in _panel_queries() for m in re.findall(r"\bfailoverd_[a-z_]+\b", q)}
    assert len(named) >= 8 and named <= exported, sorted(named - exported)
