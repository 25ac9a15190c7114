"""Bulk route requests (failoverd/kernel/rtnl.py) against a real kernel, in a namespace of the test's own."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NS = "fo-test-rtnl"

CHILD = """
import asyncio, json
from failoverd.kernel.rtnl import RouteMsg, RouteSocket

async def main():
    rt = RouteSocket()
    ok1 = RouteMsg(4, 100001, 74, 1, gateway="198.18.0.1", oif=IFINDEX)
    missing = RouteMsg(4, 100002, 74, 1, gateway="198.18.0.1", oif=IFINDEX)
    no_dev = RouteMsg(4, 100003, 74, 1, gateway="198.18.0.1", oif=99999)
    ok2 = RouteMsg(4, 100004, 74, 6)  # blackhole
    codes = await rt.apply([("replace", ok1), ("del", missing), ("replace", no_dev), ("replace", ok2)])
    mine = sorted((r.table, r.type, r.gateway) for r in await rt.dump(4) if r.protocol == 74)
    print(json.dumps({"codes": codes, "mine": mine}))

asyncio.run(main())
"""


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates fo-* network namespaces")
    from bench.reconcile import scratch_netns

    with scratch_netns(NS) as name:
        yield name


def test_each_request_gets_its_own_answer_within_one_window(netns: str) -> None:
    """Only the window's last request asks for an ack; failures in the middle must still be reported
    against the right request, and the requests around them must still be done."""
    index = json.loads(
        subprocess.run(
            ["ip", "-n", netns, "-j", "link", "show", "d0"], capture_output=True, text=True, check=True
        ).stdout
    )[0]["ifindex"]
    code = CHILD.replace("IFINDEX", str(index))
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout)
    assert got["codes"] == [0, errno.ESRCH, errno.ENETUNREACH, 0]  # the kernel's own answer to each
    assert got["mine"] == [[100001, 1, "198.18.0.1"], [100004, 6, None]]
    shown = subprocess.run(
        ["ip", "-n", netns, "-4", "route", "show", "table", "all", "proto", "74"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "default via 198.18.0.1 dev d0 table 100001" in shown
    assert "blackhole default table 100004" in shown


def test_kernel_reconciles_many_routes_across_windows() -> None:
    """The daemon's Kernel installs, audits, switches and purges more routes than one window holds;
    the benchmark checks each step against `ip route` and stops on any difference."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates fo-* network namespaces")
    from bench import reconcile

    r = reconcile.run((700,))
    (row,) = r["sizes"]
    assert row["routes"] == 700
    assert {"install_s", "audit_s", "replace_s", "purge_s", "ip_batch_install_s"} <= row.keys()


WRITER_CHILD = """
import asyncio, json, subprocess
from dataclasses import replace
from failoverd.kernel import plan
from failoverd.kernel.writer import KernelWriter
from failoverd.policy import parse_policy_text

POLICY = '''
site: t
ownership: {route_protocol: 74}
uplinks: [{name: a, interface: d0, next_hop: 198.18.0.1}]
classes: [{name: web, match: [{dport: 443, protocol: tcp}], path: [a]}, {name: rest, path: [a]}]
'''

def sh(*argv):
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout

def kernel():
    return {
        "routes": sh("ip", "-4", "route", "show", "table", "all", "proto", "74").splitlines(),
        "rules": [line for line in sh("ip", "-4", "rule").splitlines() if "proto 74" in line],
        "tables": sh("nft", "list", "tables").split(),
    }

async def main():
    policy = parse_policy_text(POLICY, "t.yaml")
    want = plan.desired(policy, {n: ("a", "via") for n in policy.classes})
    out = {}
    async with KernelWriter(policy.ownership) as k:
        first = await k.apply(want, full=True)
        out["first"] = [first.ruleset, len(first.added), list(first.failed), kernel()]
        again = await k.apply(want, full=True)
        out["again"] = [again.ruleset, list(again.changed)]
        broken = await k.apply(replace(want, ruleset="table inet failoverd { nonsense }\\n"))
        out["broken"] = [broken.ruleset, broken.nft_error is not None, kernel()]
        purged = await k.purge()
        out["purged"] = [purged.ruleset, len(purged.removed), kernel()]
    print(json.dumps(out))

asyncio.run(main())
"""


def test_kernel_writer_applies_and_purges_routes_rules_and_the_nftables_table(netns: str) -> None:
    """One writer for everything failoverd owns: a real kernel and a real nft hold what apply asked, a
    refused ruleset leaves routing and the last good table alone, and purge leaves nothing of ours."""
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", WRITER_CHILD],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])  # after the log lines the writer prints
    ruleset, added, failed, held = got["first"]
    assert (ruleset, failed) == ("loaded", [])
    assert added == 3 + 8  # the uplink's and the two classes' routes; 4 rules in each family
    assert sum("default via 198.18.0.1 dev d0" in line for line in held["routes"]) == 3
    assert len(held["rules"]) == 4
    assert "failoverd" in held["tables"]
    assert got["again"] == ["unchanged", []]
    ruleset, refused, held = got["broken"]
    assert (ruleset, refused) == ("failed", True)
    assert "failoverd" in held["tables"] and len(held["routes"]) == 3  # the last good table and routing stay
    ruleset, removed, held = got["purged"]
    assert (ruleset, removed) == ("removed", 3 + 8)
    assert (held["routes"], held["rules"]) == ([], [])
    assert "failoverd" not in held["tables"]
