"""Carrier through a real kernel: a link that changes before the netlink monitor subscribes is still reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NS = "fo-test-watch"

# Run inside the namespace. The order is the daemon's: KernelWriter dumps the links as it opens, the
# first step may then switch a link (a cold terminal released at start), and only after that does
# LinkService tell the engine what the dump said and start watching. d0 goes down in that gap: no
# monitor is subscribed yet, so the kernel's RTM_NEWLINK for it reaches no one, and only a second
# dump after subscribing can tell what changed.
WRITER = """
import asyncio, json, subprocess
from failoverd.kernel.writer import KernelWriter, LinkEvent
from failoverd.policy.model import OwnershipSpec

async def main():
    events = []
    async with KernelWriter(OwnershipSpec(74, (1000, 1999), (100000, 100999), 0xFF00)) as kernel:
        dumped = kernel.links["d0"].up
        subprocess.run(["ip", "link", "set", "dev", "d0", "down"], check=True)
        try:
            async with asyncio.timeout(3):
                async for e in kernel.watch():
                    if isinstance(e, LinkEvent) and e.link.name == "d0":
                        events.append({"up": e.link.up, "gone": e.gone})
                        break
        except TimeoutError:
            pass
    print(json.dumps({"dumped_up": dumped, "events": events}))

asyncio.run(main())
"""

SERVICE = """
import asyncio, json, subprocess
from failoverd.engine import events as ev
from failoverd.kernel.writer import KernelWriter
from failoverd.policy import parse_policy_text
from failoverd.services.links import LinkService

POLICY = parse_policy_text('''
site: watch
uplinks:
  - {name: wan, interface: d0, next_hop: 198.18.0.1}
classes:
  - {name: all, path: [wan]}
''', "watch.yaml")


class View:
    policy = POLICY


async def main():
    inbox = asyncio.Queue()
    told = []
    async with KernelWriter(POLICY.ownership) as kernel:
        dumped = kernel.links["d0"].up
        subprocess.run(["ip", "link", "set", "dev", "d0", "down"], check=True)
        service = asyncio.create_task(LinkService(kernel, View(), inbox).run())
        try:
            async with asyncio.timeout(3):
                while not told or told[-1]:
                    e = await inbox.get()
                    if isinstance(e, ev.CarrierChanged):
                        told.append(e.up)
        except TimeoutError:
            pass
        service.cancel()
        cached = kernel.links["d0"].up
    print(json.dumps({"dumped_up": dumped, "told": told, "cached_up": cached}))

asyncio.run(main())
"""


def _run(netns: str, child: str) -> dict[str, Any]:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", child],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    got: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return got


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates fo-* network namespaces")
    from bench.reconcile import scratch_netns

    with scratch_netns(NS) as name:
        yield name


def test_the_watch_reports_a_link_that_changed_before_it_subscribed(netns: str) -> None:
    got = _run(netns, WRITER)
    assert got["dumped_up"] is True  # the start-up dump saw d0 up
    assert got["events"] == [{"up": False, "gone": False}], got  # before the fix: none within 3 s


def test_the_engine_hears_that_the_carrier_went_in_that_gap(netns: str) -> None:
    got = _run(netns, SERVICE)
    assert got["dumped_up"] is True
    # LinkService first says what the dump said (up); the watch must then say that the carrier is gone
    # (before the fix nothing came: the engine kept the uplink up until the link changed again).
    assert got["told"] == [True, False], got
    assert got["cached_up"] is False  # and the writer's cache, which routes are resolved against, follows
