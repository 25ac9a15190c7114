"""Netlink (pyroute2; rtnl.py for bulk routes): observe, reconcile and purge what failoverd owns, watch links.

Ownership: a route is failoverd's when it carries the policy's route protocol number; a rule when it
carries that protocol (FRA_PROTOCOL) and a priority inside failoverd's range. Nothing else is read
for a decision, changed or deleted.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV4_RULE,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_IPV6_RULE,
    RTMGRP_LINK,
)

from failoverd.kernel.plan import Route, Rule
from failoverd.kernel.rtnl import RouteMsg, RouteSocket, describe
from failoverd.policy.model import OwnershipSpec

FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
FAMILY_OF = {socket.AF_INET: 4, socket.AF_INET6: 6}
RTN = {1: "unicast", 6: "blackhole", 7: "unreachable"}
RTN_OF = {v: k for k, v in RTN.items()}
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
UNSET = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Link:
    name: str
    index: int
    up: bool  # administratively
    carrier: bool


@dataclass(frozen=True, slots=True)
class LinkEvent:
    link: Link
    gone: bool = False


@dataclass(frozen=True, slots=True)
class OwnedChanged:
    """Someone (maybe us) added or deleted a route or rule that carries failoverd's protocol."""

    what: str  # "route" or "rule"
    action: str  # "new" or "del"
    detail: str


@dataclass(slots=True)
class Diff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.failed)


def set_netns(name: str) -> None:
    """Move this whole process into an existing network namespace (before any socket is opened)."""
    from pyroute2.netns import setns  # noqa: PLC0415 (only needed with --netns)

    setns(name, flags=0)


def _link(msg: object) -> Link:
    flags = int(msg["flags"])  # type: ignore[index]
    return Link(msg.get("ifname"), int(msg["index"]), bool(flags & IFF_UP), bool(flags & IFF_LOWER_UP))  # type: ignore[attr-defined,index]


class Kernel:
    """Programs failoverd's routes and rules, remembering what it believes the kernel holds."""

    def __init__(self, ownership: OwnershipSpec) -> None:
        self.own = ownership
        self.ipr = AsyncIPRoute()
        self.rt: RouteSocket | None = None
        self.routes: set[Route] = set()
        self.rules: set[Rule] = set()
        self.links: dict[str, Link] = {}
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Kernel:
        await self.ipr.__aenter__()
        self.rt = RouteSocket()
        await self.refresh_links()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.rt is not None:
            self.rt.close()
        await self.ipr.__aexit__(*exc)

    @property
    def _rt(self) -> RouteSocket:
        if self.rt is None:
            raise RuntimeError("Kernel used outside `async with`")
        return self.rt

    # -- observe ------------------------------------------------------------------------------------
    async def refresh_links(self) -> dict[str, Link]:
        links = [_link(m) async for m in await self.ipr.link("dump")]
        self.links = {ln.name: ln for ln in links}
        return self.links

    async def observe(self) -> tuple[set[Route], set[Rule]]:
        """Dump what failoverd owns now; refreshes the cache."""
        await self.refresh_links()
        routes: set[Route] = set()
        names = {ln.index: ln.name for ln in self.links.values()}
        for fam in (4, 6):
            for m in await self._rt.dump(fam):
                if m.protocol != self.own.route_protocol:
                    continue
                kind = RTN.get(m.type, f"type{m.type}")
                if m.dst_len != 0:
                    kind = f"{kind}/{m.dst}/{m.dst_len}"  # not a shape we make: stale, to be removed
                if kind in ("blackhole", "unreachable"):
                    routes.add(Route(m.table, fam, kind))  # the kernel hangs them on lo: not ours to say
                else:
                    routes.add(Route(m.table, fam, kind, m.gateway, names.get(m.oif) if m.oif is not None else None))
        rules: set[Rule] = set()
        lo, hi = self.own.rule_priorities
        for fam in (4, 6):
            async for m in await self.ipr.rule("dump", family=FAMILY[fam]):
                prio = m.get("priority")
                if prio is None or not lo <= prio <= hi or m.get("protocol") != self.own.route_protocol:
                    continue
                fwmark = m.get("fwmark")
                sup = m.get("suppress_prefixlen")
                rules.add(
                    Rule(
                        priority=int(prio),
                        family=fam,
                        table=int(m.get("table") or m["table"]),
                        fwmark=fwmark,
                        fwmask=m.get("fwmask") if fwmark is not None else None,
                        suppress_prefixlen=None if sup in (None, UNSET) else int(sup),
                    )
                )
        self.routes, self.rules = routes, rules
        return routes, rules

    # -- reconcile ----------------------------------------------------------------------------------
    async def reconcile(self, routes: Iterable[Route], rules: Iterable[Rule], *, full: bool = False) -> Diff:
        """Make the kernel hold exactly these owned routes and rules; a no-op when it already does.

        Against the cache by default (one netlink request per real change: the fast path of a
        failover); `full` dumps the kernel first (start-up, periodic audit, after foreign changes).
        """
        want_routes, want_rules = set(routes), set(rules)
        async with self._lock:
            if full:
                await self.observe()
            diff = Diff()
            keys = {(r.table, r.family) for r in want_routes}
            # What a replace displaces: the cached default routes of the same table and family.
            held: dict[tuple[int, int], set[Route]] = {}
            for x in self.routes:
                held.setdefault((x.table, x.family), set()).add(x)
            # Replace first: a class's switch is a single atomic replace of its default route.
            adds = sorted(want_routes - self.routes)
            for r, code in zip(adds, await self._routes("replace", adds), strict=True):
                if code:
                    diff.failed.append(f"{r}: {describe(code)}")
                    continue
                self.routes -= {x for x in held.pop((r.table, r.family), ()) if "/" not in x.kind}
                self.routes.add(r)
                diff.added.append(str(r))
            # Replaced above unless stale-shaped: a replace displaced the old default route.
            dels = sorted(r for r in self.routes - want_routes if (r.table, r.family) not in keys or "/" in r.kind)
            for r, code in zip(dels, await self._routes("del", dels), strict=True):
                if code and code != errno.ESRCH:  # already gone
                    diff.failed.append(f"delete {r}: {describe(code)}")
                    continue
                self.routes.discard(r)
                diff.removed.append(str(r))
            for rule in sorted(self.rules - want_rules):
                try:
                    await self._rule("del", rule)
                except NetlinkError as exc:
                    if exc.code != 2:  # ENOENT
                        diff.failed.append(f"delete rule {rule}: {exc}")
                        continue
                self.rules.discard(rule)
                diff.removed.append(str(rule))
            for rule in sorted(want_rules - self.rules):
                try:
                    await self._rule("add", rule)
                except NetlinkError as exc:
                    if exc.code != 17:  # EEXIST: someone re-added it; it is ours by its protocol
                        diff.failed.append(f"rule {rule}: {exc}")
                        continue
                self.rules.add(rule)
                diff.added.append(str(rule))
            return diff

    async def purge(self) -> Diff:
        """Remove everything failoverd owns (for --restore-on-exit and `failoverd purge`)."""
        return await self.reconcile((), (), full=True)

    async def _routes(self, cmd: str, routes: list[Route]) -> list[int]:
        """Replace or delete these routes, pipelined; the errno of each (0: done)."""
        msgs: list[tuple[str, RouteMsg] | None] = []
        for r in routes:
            try:
                msgs.append((cmd, self._route_msg(r)))
            except LookupError:
                msgs.append(None)
        done = iter(await self._rt.apply([m for m in msgs if m is not None]))
        return [errno.ENODEV if m is None else next(done) for m in msgs]  # its interface does not exist

    def _route_msg(self, r: Route) -> RouteMsg:
        proto = self.own.route_protocol
        if "/" in r.kind:  # a stale foreign-shaped route of ours: delete by its own prefix
            base, pfx, plen = r.kind.split("/")
            return RouteMsg(r.family, r.table, proto, RTN_OF.get(base, 1), pfx, int(plen))
        if r.kind != "unicast":
            return RouteMsg(r.family, r.table, proto, RTN_OF[r.kind])
        oif = None
        if r.dev is not None:
            link = self.links.get(r.dev)
            if link is None:
                raise LookupError(r.dev)
            oif = link.index
        return RouteMsg(r.family, r.table, proto, 1, None, 0, r.gateway, oif)

    async def _rule(self, cmd: str, rule: Rule) -> None:
        kw: dict[str, object] = {
            "family": FAMILY[rule.family],
            "priority": rule.priority,
            "table": rule.table,
            "protocol": self.own.route_protocol,
        }
        if rule.fwmark is not None:
            kw.update(fwmark=rule.fwmark, fwmask=rule.fwmask)
        if rule.suppress_prefixlen is not None:
            kw["suppress_prefixlen"] = rule.suppress_prefixlen
        await self.ipr.rule(cmd, **kw)

    # -- watch --------------------------------------------------------------------------------------
    async def watch(self) -> AsyncIterator[LinkEvent | OwnedChanged]:
        """Link carrier changes, and any change to routes or rules carrying failoverd's protocol."""
        groups = RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_IPV4_RULE | RTMGRP_IPV6_RULE
        async with AsyncIPRoute() as mon:
            await mon.bind(groups=groups)
            # Subscribed only now: a link that changed since the last dump (a cold terminal switched off
            # by the first step after a start, say) would be missed, and its carrier left stale for good.
            # Dump once more and report what differs from the cache, as the monitor would have.
            for link in [_link(m) async for m in await self.ipr.link("dump")]:
                if self.links.get(link.name) != link:
                    self.links[link.name] = link
                    yield LinkEvent(link)
            while True:
                for m in await _batch(mon):
                    event = m["event"]
                    if event in ("RTM_NEWLINK", "RTM_DELLINK"):
                        link = _link(m)
                        gone = event == "RTM_DELLINK"
                        if gone:
                            self.links.pop(link.name, None)
                        else:
                            self.links[link.name] = link
                        yield LinkEvent(link, gone)
                    elif event in ("RTM_NEWROUTE", "RTM_DELROUTE") and m["proto"] == self.own.route_protocol:
                        yield OwnedChanged("route", event[4:7].lower(), f"table {m.get('table')}")
                    elif event in ("RTM_NEWRULE", "RTM_DELRULE") and m.get("protocol") == self.own.route_protocol:
                        yield OwnedChanged("rule", event[4:7].lower(), f"priority {m.get('priority')}")


async def _batch(mon: AsyncIPRoute) -> list[dict[str, object]]:
    got = mon.get()
    if hasattr(got, "__aiter__"):
        return [m async for m in got]
    return list(await got)
