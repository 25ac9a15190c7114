"""Reconcile cost: the time failoverd's netlink layer takes to install, audit, replace and purge N owned routes.

`python -m bench reconcile [--sizes 1000,10000]` (root): in a namespace of its own (fo-bench-rc) with
one veth pair, the daemon's own `Kernel` is asked to make the kernel hold N default routes in N
tables, then to audit them (a full dump, nothing to change), to move all of them to another next hop,
and to purge them. Each step is checked against `ip route` so that a fast wrong answer cannot pass.
The same installs and switches through `ip -batch` (iproute2, C) run beside them as the kernel's
floor: with one next hop in N tables the kernel's own work grows faster than N.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from failoverd.kernel.netlink import Kernel, set_netns
from failoverd.kernel.plan import Route
from failoverd.policy.model import OwnershipSpec

ROOT = Path(__file__).resolve().parent.parent
NS = "fo-bench-rc"
PROTO = 74
FIRST_TABLE = 100_000
OWN = OwnershipSpec(
    route_protocol=PROTO, rule_priorities=(10_000, 10_999), tables=(FIRST_TABLE, 200_000), fwmark_mask=0
)


def _routes(n: int, gateway: str) -> list[Route]:
    return [Route(FIRST_TABLE + i, 4, "unicast", gateway, "d0") for i in range(n)]


def _kernel_count(gateway: str | None = None) -> int:
    out = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all", "proto", str(PROTO)], capture_output=True, text=True, check=True
    ).stdout
    return sum(1 for line in out.splitlines() if gateway is None or f"via {gateway} " in line)


async def _one(n: int) -> dict[str, Any]:
    first, second = _routes(n, "198.18.0.1"), _routes(n, "198.18.0.2")
    async with Kernel(OWN) as k:
        await k.observe()
        if k.routes:
            raise SystemExit(f"{NS} is not empty: {len(k.routes)} owned routes")
        steps: dict[str, float] = {}

        async def timed(name: str, coro: Any, expect: int, gateway: str | None) -> None:
            t0 = time.perf_counter()
            diff = await coro
            steps[name] = round(time.perf_counter() - t0, 3)
            got = _kernel_count(gateway)
            if diff.failed or got != expect:
                raise SystemExit(f"{name}: kernel holds {got} routes, expected {expect}; failed: {diff.failed[:3]}")

        await timed("install_s", k.reconcile(first, ()), n, "198.18.0.1")
        await timed("audit_s", k.reconcile(first, (), full=True), n, "198.18.0.1")
        await timed("replace_s", k.reconcile(second, ()), n, "198.18.0.2")
        await timed("purge_s", k.purge(), 0, None)
    steps.update(_iproute2(n))
    return {"routes": n, **steps}


def _iproute2(n: int) -> dict[str, float]:
    """`ip -batch` installing, then switching, the same N routes; the kernel's floor for each."""
    out: dict[str, float] = {}
    for name, gw in (("ip_batch_install_s", "198.18.0.1"), ("ip_batch_replace_s", "198.18.0.2")):
        script = "".join(
            f"route replace default via {gw} dev d0 table {FIRST_TABLE + i} proto {PROTO}\n" for i in range(n)
        )
        t0 = time.perf_counter()
        subprocess.run(["ip", "-batch", "-"], input=script, text=True, check=True)
        out[name] = round(time.perf_counter() - t0, 3)
        if (got := _kernel_count(gw)) != n:
            raise SystemExit(f"ip -batch left {got} routes via {gw}, expected {n}")
    subprocess.run(["ip", "-4", "route", "flush", "table", "all", "proto", str(PROTO)], check=True)
    return out


def child(sizes: list[int]) -> None:
    set_netns(NS)
    print(json.dumps({"sizes": [asyncio.run(_one(n)) for n in sizes]}))


@contextlib.contextmanager
def scratch_netns(name: str = NS) -> Iterator[str]:
    """A namespace of its own with one veth pair, d0 (198.18.0.10/24) and d1, removed on exit."""
    if not name.startswith("fo-"):
        raise ValueError(f"scratch namespaces are named fo-*: {name}")
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            ["link", "add", "name", "d0", "type", "veth", "peer", "name", "d1"],
            ["link", "set", "dev", "d1", "up"],
            ["link", "set", "dev", "d0", "up"],
            ["addr", "add", "198.18.0.10/24", "dev", "d0"],
        ):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def run(sizes: tuple[int, ...] = (1_000, 10_000)) -> dict[str, Any]:
    """Measure in a child process inside a scratch namespace."""
    with scratch_netns():
        out = subprocess.run(
            [sys.executable, "-m", "bench.reconcile", "--child", ",".join(map(str, sizes))],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"reconcile benchmark failed: {out.stderr.strip()[-2000:]}")
        result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
        return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench reconcile", description=__doc__)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child([int(x) for x in args.child.split(",")])
        return 0
    r = run(tuple(int(x) for x in args.sizes.split(",")))
    for s in r["sizes"]:
        print(
            f"{s['routes']:>6} routes: install {s['install_s']} s, audit {s['audit_s']} s, "
            f"replace {s['replace_s']} s, purge {s['purge_s']} s; "
            f"ip -batch: install {s['ip_batch_install_s']} s, replace {s['ip_batch_replace_s']} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
