"""The one kernel writer: failoverd's routes, rules, nftables table and conntrack flushes all go through here.

The daemon computes what it wants (plan.desired, pure) and hands it to `apply`; `failoverd purge` and
--restore-on-exit call `purge`. Routes and rules are programmed over netlink (netlink.py, against a
cache of what the kernel holds, or after a dump with `full`); the nftables table is loaded only when
its text differs from the one last handed to nft, so a failover costs netlink requests only. A
refused nftables load never stops routing: rules and routes still steer traffic marked by the old
table, the failure is logged, and it is reported in the result.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from failoverd.kernel import conntrack, nft
from failoverd.kernel.netlink import Kernel, Link, LinkEvent, OwnedChanged
from failoverd.kernel.plan import Desired, Route, Rule
from failoverd.observe.logging import get as get_logger
from failoverd.policy.model import OwnershipSpec

log = get_logger("failoverd")
__all__ = ["Applied", "KernelWriter", "Link", "LinkEvent", "OwnedChanged"]  # what the daemon reads of links

RulesetOutcome = Literal["unchanged", "loaded", "failed", "removed"]


@dataclass(frozen=True, slots=True)
class Applied:
    """What one apply (or purge) changed in the kernel, and what the kernel refused."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()  # routes and rules the kernel refused (a route via a link that is down)
    ruleset: RulesetOutcome = "unchanged"
    nft_error: str | None = None  # why nft refused the ruleset (ruleset == "failed")

    @property
    def changed(self) -> tuple[str, ...]:
        return self.added + self.removed


class KernelWriter:
    """Owns what failoverd programs into the kernel, for one ownership (route protocol, priorities, marks).

    Use as `async with KernelWriter(policy.ownership) as kernel:`; the ownership cannot change while it
    runs (a reload that changes it needs a restart).
    """

    def __init__(self, ownership: OwnershipSpec) -> None:
        self.ownership = ownership
        self._netlink = Kernel(ownership)
        self._ruleset: str | None = None  # the text last handed to nft, loaded or refused
        self._nft_error: str | None = None
        self._refused: frozenset[str] = frozenset()
        self._lock = asyncio.Lock()  # one apply or purge at a time: the ruleset and the cache move together

    async def __aenter__(self) -> KernelWriter:
        await self._netlink.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._netlink.__aexit__(*exc)

    # -- read ---------------------------------------------------------------------------------------
    @property
    def links(self) -> Mapping[str, Link]:
        """Interfaces by name, as last dumped or reported by `watch`."""
        return self._netlink.links

    async def observe(self) -> tuple[set[Route], set[Rule]]:
        """Dump the routes and rules failoverd owns now (at start-up: what an earlier run left to adopt)."""
        return await self._netlink.observe()

    def watch(self) -> AsyncIterator[LinkEvent | OwnedChanged]:
        """Link changes, and any change to a route or rule carrying failoverd's protocol."""
        return self._netlink.watch()

    def status(self) -> dict[str, Any]:
        return {
            "routes": len(self._netlink.routes),
            "rules": len(self._netlink.rules),
            "refused": sorted(self._refused),
            "ruleset": "not loaded" if self._ruleset is None else "refused" if self._nft_error else "loaded",
            "nft_error": self._nft_error,
        }

    # -- write --------------------------------------------------------------------------------------
    async def apply(self, want: Desired, *, full: bool = False, reload_ruleset: bool = False) -> Applied:
        """Make the kernel hold exactly `want`; a no-op when it already does.

        Routes and rules are compared with the cache (one netlink request per real change: the fast
        path of a failover) or, with `full`, with a dump of the kernel first (start-up, reload, the
        periodic audit, after a foreign change). The ruleset is loaded when its text changed, and
        with `reload_ruleset` (a policy reload: it also repairs a table deleted by hand, as before).
        """
        async with self._lock:
            ruleset: RulesetOutcome = "unchanged"
            if want.ruleset != self._ruleset or reload_ruleset:
                self._ruleset = want.ruleset
                try:
                    await nft.load(want.ruleset)
                except nft.NftError as exc:
                    # Rules and routes still steer marked traffic; only classification is missing.
                    log.error("nft-failed", error=str(exc))
                    self._nft_error, ruleset = str(exc), "failed"
                else:
                    self._nft_error, ruleset = None, "loaded"
            diff = await self._netlink.reconcile(want.routes, want.rules, full=full)
            self._note_refused(frozenset(diff.failed))
            return Applied(tuple(diff.added), tuple(diff.removed), tuple(diff.failed), ruleset, self._nft_error)

    async def purge(self) -> Applied:
        """Remove every route, rule and the nftables table failoverd owns (`failoverd purge`, --restore-on-exit)."""
        async with self._lock:
            diff = await self._netlink.reconcile((), (), full=True)
            self._refused = frozenset()
            self._ruleset = None
            try:
                await nft.remove()
            except nft.NftError as exc:
                self._nft_error = str(exc)
                return Applied(tuple(diff.added), tuple(diff.removed), tuple(diff.failed), "failed", str(exc))
            self._nft_error = None
            return Applied(tuple(diff.added), tuple(diff.removed), tuple(diff.failed), "removed")

    async def flush_conntrack(self, mark: int, families: tuple[int, ...] = (4, 6)) -> tuple[bool, str]:
        """Forget the flows of one class (its mark, under failoverd's mark mask) in each family it
        carries (kernel.plan.class_families); (ok, what happened)."""
        return await conntrack.flush_families(mark, self.ownership.fwmark_mask, families)

    def _note_refused(self, failed: frozenset[str]) -> None:
        # A route via a link that is down (a cold standby that is off) is refused on every try: say so
        # when it starts and when it ends, not at every apply.
        for failure in sorted(failed - self._refused):
            log.warning("kernel-refused", detail=failure, note="retried on link changes and every audit")
        for failure in sorted(self._refused - failed):
            log.info("kernel-accepted", detail=failure)
        self._refused = failed
