"""Golden kernel plans: the rules, routes and nftables ruleset each example policy asks the kernel for.

Rendered as `ip rule`, `ip route` and `nft list table` would print them, and compared with
tests/golden/kernel/<policy>.txt; a change to plan.py or nft.py that changes what reaches the kernel
fails here until the golden file is regenerated (`UPDATE_GOLDEN=1`) and the difference reviewed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from failoverd.kernel import plan
from failoverd.kernel.plan import Desired, Route, Rule
from failoverd.policy import load_policy
from failoverd.policy.model import Policy

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "kernel"
POLICIES = sorted([*(ROOT / "policies").glob("*.yaml"), *(ROOT / "bench" / "policies").glob("*.yaml")])
TABLE_NAMES = {plan.MAIN_TABLE: "main"}


def _golden_name(path: Path) -> str:
    return str(path.relative_to(ROOT).with_suffix("")).replace("/", "-")


def rule_line(r: Rule, proto: int) -> str:
    sel = f"fwmark {r.fwmark:#x}/{r.fwmask:#x} " if r.fwmark is not None else ""
    sup = f" suppress_prefixlength {r.suppress_prefixlen}" if r.suppress_prefixlen is not None else ""
    return f"{r.priority}:\tfrom all {sel}lookup {TABLE_NAMES.get(r.table, r.table)}{sup} proto {proto}"


def route_line(r: Route, proto: int) -> str:
    if r.kind != "unicast":
        return f"{r.kind} default table {r.table} proto {proto}"
    via = f"via {r.gateway} " if r.gateway else ""
    return f"default {via}dev {r.dev} table {r.table} proto {proto}"


def _section(title: str, lines: Iterable[str]) -> list[str]:
    return [f"## {title}", *lines, ""]


def render(policy: Policy, first: Desired, all_down: Desired) -> str:
    """The plan as text; every list sorted so that only a real change moves a line."""
    proto = policy.ownership.route_protocol
    source = Path(policy.source).resolve().relative_to(ROOT)
    out = [f"# kernel plan of {source} (tests/test_kernel_render.py; UPDATE_GOLDEN=1 regenerates)", ""]
    for fam in (4, 6):
        rules = sorted(r for r in first.rules if r.family == fam)
        out += _section(f"ip -{fam} rule", (rule_line(r, proto) for r in rules))
    for title, want in (("each class on the first uplink of its path", first), ("every uplink down", all_down)):
        for fam in (4, 6):
            routes = [route_line(r, proto) for r in sorted(want.routes) if r.family == fam]
            out += _section(f"ip -{fam} route show table all proto {proto}: {title}", routes)
    out += _section("nft list table inet failoverd", first.ruleset.splitlines())
    return "\n".join(out)


def first_uplinks(policy: Policy) -> Mapping[str, tuple[str | None, str]]:
    return {name: (c.path[0], "via") for name, c in policy.classes.items()}


def every_uplink_down(policy: Policy) -> Mapping[str, tuple[str | None, str]]:
    # `keep` leaves the class on its last route: here the first uplink of its path.
    return {
        name: (c.path[0], "via") if c.when_all_down == "keep" else (None, c.when_all_down)
        for name, c in policy.classes.items()
    }


def test_every_example_policy_has_a_golden_plan() -> None:
    assert len(POLICIES) >= 5
    names = {_golden_name(p) + ".txt" for p in POLICIES}
    assert names == {p.name for p in GOLDEN.glob("*.txt")} or os.environ.get("UPDATE_GOLDEN")


@pytest.mark.parametrize("path", POLICIES, ids=_golden_name)
def test_kernel_plan_matches_golden(path: Path) -> None:
    policy = load_policy(path)
    first = plan.desired(policy, first_uplinks(policy))
    down = plan.desired(policy, every_uplink_down(policy))
    assert first.rules == down.rules and first.ruleset == down.ruleset  # only routes follow the engine
    text = render(policy, first, down)
    golden = GOLDEN / f"{_golden_name(path)}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no {golden.relative_to(ROOT)}: run with UPDATE_GOLDEN=1 and review it"
    assert text == golden.read_text(), f"the kernel plan of {path.name} changed: review, then UPDATE_GOLDEN=1"


def test_a_change_to_the_plan_is_caught() -> None:
    """The comparison sees one moved route: the golden files are not compared with themselves."""
    policy = load_policy(POLICIES[0])
    first = plan.desired(policy, first_uplinks(policy))
    down = plan.desired(policy, every_uplink_down(policy))
    moved = Desired(first.routes - {max(first.routes)}, first.rules, first.ruleset)
    assert render(policy, moved, down) != render(policy, first, down)
    assert render(policy, first, down) == (GOLDEN / f"{_golden_name(POLICIES[0])}.txt").read_text()
