"""The lab's containerlab file: valid for containerlab, and what the namespace runner builds."""

from __future__ import annotations

import json
import os
from ipaddress import IPv4Interface, IPv6Interface, ip_interface, ip_network
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from lab.netns import LabError
from lab.scenario import catalog, load_scenario
from lab.topology import CLAB, load

ROOT = Path(__file__).resolve().parent.parent
IfAddress = IPv4Interface | IPv6Interface
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
        "mno-c",
    } <= set(spec.nodes)
    ends = {(a, a_if) for a, a_if, _, _ in spec.links} | {(b, b_if) for _, _, b, b_if in spec.links}
    for iface in ("fiber0", "mob1", "mob2", "mob3", "sat0", "lan0", "lan1", "wwan0"):
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
                "clock-step", "carrier-outage-single-modem", "sim-switch", "fiber-cut-v6", "v6-only-dead"}  # fmt: skip
    assert required <= names
    for name in names:
        s = load_scenario(name)
        assert s.name == name and s.expect, name


def _addresses(spec_lines: tuple[str, ...]) -> dict[str, list[IfAddress]]:
    """Interface → the addresses a node's exec lines add to it."""
    out: dict[str, list[IfAddress]] = {}
    for line in spec_lines:
        words = line.split()
        if words[:3] == ["ip", "addr", "add"] and "dev" in words:
            out.setdefault(words[words.index("dev") + 1], []).append(ip_interface(words[3]))
    return out


def test_every_link_is_dual_stack_but_carrier_cs_access() -> None:
    """Each end of each link has an IPv6 address from 2001:db8::/32, and an IPv4 one, except the link to
    the IPv6-only carrier C (gw mob3 to mno-c down0), which has no IPv4 at all; and both ends of a link
    share its prefixes."""
    spec = load()
    addrs = {node: _addresses(lines) for node, lines in spec.nodes.items()}
    doc = ip_network("2001:db8::/32")
    for a, a_if, b, b_if in spec.links:
        ipv6_only = {(a, a_if), (b, b_if)} == {("gw", "mob3"), ("mno-c", "down0")}
        for fam in (4, 6):
            nets = []
            for node, iface in ((a, a_if), (b, b_if)):
                mine = [i for i in addrs[node].get(iface, []) if i.version == fam]
                if fam == 4 and ipv6_only:
                    assert not mine, (node, iface, mine)
                    continue
                assert len(mine) == 1, (node, iface, fam, addrs[node].get(iface))
                if fam == 6:
                    assert mine[0].network.subnet_of(doc), mine
                nets.append(mine[0].network)
            assert len(set(nets)) <= 1, (a, a_if, b, b_if, nets)


def test_the_lab_v6_policy_and_scenarios_load() -> None:
    """policies/lab-v6.yaml is valid; its uplinks name the lab's interfaces; mobile-c is IPv6-only."""
    from failoverd.policy import load_policy

    policy = load_policy(ROOT / "policies" / "lab-v6.yaml")
    spec = load()
    gw_ifaces = {a_if for a, a_if, _, _ in spec.links if a == "gw"}
    assert {u.interface for u in policy.uplinks.values()} <= gw_ifaces
    assert {u.interface for u in policy.uplinks.values() if u.operator == "carrier-c"} == {"mob3"}
    for name in ("fiber-cut-v6", "v6-only-dead"):
        s = load_scenario(name)
        assert s.policy == "policies/lab-v6.yaml" and s.traffic.critical6 is not None, name
