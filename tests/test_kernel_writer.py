"""KernelWriter without a kernel: nftables loaded only when its text changes, refusals said once, purge whole."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from failoverd.kernel import conntrack, nft, plan, writer
from failoverd.kernel.netlink import Diff
from failoverd.kernel.plan import Route, Rule
from failoverd.kernel.writer import KernelWriter
from failoverd.policy import load_policy
from failoverd.policy.model import OwnershipSpec, Policy

ROOT = Path(__file__).resolve().parent.parent


class FakeNetlink:
    """netlink.Kernel's cache semantics, without sockets; refuses routes on the devices in `down`."""

    def __init__(self, ownership: OwnershipSpec) -> None:
        self.routes: set[Route] = set()
        self.rules: set[Rule] = set()
        self.links: dict[str, object] = {}
        self.down: set[str] = set()
        self.calls: list[str] = []

    async def __aenter__(self) -> FakeNetlink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def reconcile(self, routes: Iterable[Route], rules: Iterable[Rule], *, full: bool = False) -> Diff:
        self.calls.append("reconcile-full" if full else "reconcile")
        want_routes, want_rules = set(routes), set(rules)
        diff = Diff()
        for r in sorted(want_routes - self.routes):
            if r.dev in self.down:
                diff.failed.append(f"{r}: ENETDOWN")
            else:
                diff.added.append(str(r))
                self.routes.add(r)
        for r in sorted(self.routes - want_routes):
            diff.removed.append(str(r))
            self.routes.discard(r)
        diff.added += [str(x) for x in sorted(want_rules - self.rules)]
        diff.removed += [str(x) for x in sorted(self.rules - want_rules)]
        self.rules = want_rules
        return diff


@pytest.fixture
def policy() -> Policy:
    return load_policy(ROOT / "policies" / "branch.yaml")


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    done: list[str] = []

    async def load(ruleset: str) -> None:
        done.append(ruleset)

    async def remove() -> None:
        done.append("removed")

    monkeypatch.setattr(nft, "load", load)
    monkeypatch.setattr(nft, "remove", remove)
    monkeypatch.setattr(writer, "Kernel", FakeNetlink)
    return done


def _netlink(k: KernelWriter) -> FakeNetlink:
    fake = k._netlink
    assert isinstance(fake, FakeNetlink)
    return fake


def _on(policy: Policy, index: int) -> plan.Desired:
    return plan.desired(policy, {n: (c.path[min(index, len(c.path) - 1)], "via") for n, c in policy.classes.items()})


async def test_the_ruleset_is_loaded_only_when_its_text_changes(policy: Policy, loads: list[str]) -> None:
    async with KernelWriter(policy.ownership) as k:
        first = await k.apply(_on(policy, 0), full=True)
        assert first.ruleset == "loaded" and first.added and not first.failed
        switched = await k.apply(_on(policy, 1))  # a failover: routes only
        assert switched.ruleset == "unchanged" and switched.changed
        audit = await k.apply(_on(policy, 1), full=True)
        assert audit.ruleset == "unchanged" and not audit.changed
        assert len(loads) == 1
        other = load_policy(ROOT / "policies" / "emergency.yaml")
        reloaded = await k.apply(_on(other, 0), full=True)
        assert reloaded.ruleset == "loaded" and loads[-1] == nft.render(other)
        assert _netlink(k).calls == ["reconcile-full", "reconcile", "reconcile-full", "reconcile-full"]


async def test_a_refused_ruleset_does_not_stop_routing_and_is_not_retried_until_it_changes(
    policy: Policy, loads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tries: list[str] = []

    async def refuse(ruleset: str) -> None:
        tries.append(ruleset)
        raise nft.NftError("nft is not installed (Debian package nftables)")

    monkeypatch.setattr(nft, "load", refuse)
    async with KernelWriter(policy.ownership) as k:
        with capture_logs() as logs:
            got = await k.apply(_on(policy, 0), full=True)
            again = await k.apply(_on(policy, 1))
        assert got.ruleset == "failed" and got.nft_error is not None and "nft is not installed" in got.nft_error
        assert got.added  # routes and rules programmed all the same
        assert again.ruleset == "unchanged" and again.nft_error == got.nft_error
        assert len(tries) == 1
        assert [e["event"] for e in logs] == ["nft-failed"]
        assert k.status()["ruleset"] == "refused"


async def test_a_refused_route_is_said_when_it_starts_and_when_it_ends(policy: Policy, loads: list[str]) -> None:
    async with KernelWriter(policy.ownership) as k:
        _netlink(k).down = {"wwan0"}
        with capture_logs() as logs:
            first = await k.apply(_on(policy, 0), full=True)
            await k.apply(_on(policy, 0), full=True)
            _netlink(k).down = set()
            await k.apply(_on(policy, 0), full=True)
        assert first.failed and all("wwan0" in f for f in first.failed)
        events = [(e["event"], e["detail"]) for e in logs]
        assert events == [("kernel-refused", f) for f in first.failed] + [("kernel-accepted", f) for f in first.failed]


async def test_purge_removes_routes_rules_and_the_table_and_a_new_apply_loads_it_again(
    policy: Policy, loads: list[str]
) -> None:
    async with KernelWriter(policy.ownership) as k:
        want = _on(policy, 0)
        installed = await k.apply(want, full=True)
        purged = await k.purge()
        assert sorted(purged.removed) == sorted(installed.added) and purged.ruleset == "removed"
        assert not _netlink(k).routes and not _netlink(k).rules
        assert (await k.apply(want)).ruleset == "loaded"
        assert loads == [want.ruleset, "removed", want.ruleset]


async def test_conntrack_flushes_use_the_ownership_mask(
    policy: Policy, loads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[int, int, int]] = []

    async def flush(mark: int, mask: int, family: int = 4) -> tuple[bool, str]:
        asked.append((mark, mask, family))
        return True, "flushed"

    monkeypatch.setattr(conntrack, "flush_mark", flush)
    async with KernelWriter(policy.ownership) as k:
        assert await k.flush_conntrack(0x3000000) == (True, "ipv4: flushed; ipv6: flushed")
        assert await k.flush_conntrack(0x4000000, (6,)) == (True, "flushed")
    mask = policy.ownership.fwmark_mask
    assert asked == [(0x3000000, mask, 4), (0x3000000, mask, 6), (0x4000000, mask, 6)]
