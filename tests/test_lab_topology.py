"""The lab's containerlab file: valid for containerlab, and what the namespace runner builds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from lab.netns import LabError
from lab.scenario import catalog, load_scenario
from lab.topology import CLAB, load

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Path(os.environ.get("CLAB_SCHEMA", ROOT.parent / "shared" / "schemas" / "clab.schema.json"))


def test_topology_is_valid_for_containerlab() -> None:
    if not SCHEMA.exists():
        pytest.skip(f"containerlab schema not found at {SCHEMA} (set CLAB_SCHEMA)")
    from jsonschema import Draft202012Validator

    schema = json.loads(SCHEMA.read_text())
    doc = YAML(typ="safe").load(CLAB.read_text())
    errors = sorted(Draft202012Validator(schema).iter_errors(doc), key=str)
    assert not errors, [e.message for e in errors]
    # The validator is not vacuous: a bad endpoint is caught.
    doc["topology"]["links"].append({"endpoints": ["gw eth9", "inet:x"]})
    assert list(Draft202012Validator(schema).iter_errors(doc))


def test_topology_has_what_the_scenarios_need() -> None:
    spec = load()
    assert {
        "gw",
        "dispatch",
        "office",
        "isp-fiber",
        "mno-a",
        "mno-b",
        "sat-gs",
        "inet",
        "broker",
        "ops",
        "modem",
    } <= set(spec.nodes)
    ends = {(a, a_if) for a, a_if, _, _ in spec.links} | {(b, b_if) for _, _, b, b_if in spec.links}
    for iface in ("fiber0", "mob1", "mob2", "sat0", "lan0", "lan1", "wwan0"):
        assert ("gw", iface) in ends
    # The one modem reaches both carriers' networks (disaster roaming on one modem).
    assert {("modem", "radio-a", "mno-a", "radio0"), ("modem", "radio-b", "mno-b", "radio0")} <= set(spec.links)


def test_bad_topology_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.clab.yml"
    bad.write_text("name: x\ntopology:\n  nodes:\n    a: {kind: nokia_srlinux}\n")
    with pytest.raises(LabError, match="needs containerlab"):
        load(bad)
    bad.write_text("name: x\ntopology:\n  nodes:\n    a: {}\n  links:\n    - endpoints: ['a:e0', 'b:e0']\n")
    with pytest.raises(LabError, match="unknown node 'b'"):
        load(bad)


def test_every_scenario_file_is_valid() -> None:
    names = set(catalog())
    required = {"fiber-cut", "silent-blackhole", "gray-loss", "flapping-primary", "carrier-outage-roaming",
                "satellite-last-resort", "manual-failover", "recovery-revertive", "daemon-crash", "ntp-liar",
                "clock-step", "carrier-outage-single-modem", "sim-switch"}  # fmt: skip
    assert required <= names
    for name in names:
        s = load_scenario(name)
        assert s.name == name and s.expect, name
