"""Desired kernel state, computed from the policy and the engine's class assignments; pure, no I/O.

Forwarding model
----------------
Rule priorities, lowest first, inside failoverd's range P..:
  P+i      fwmark <uplink i mark>/mask  lookup <uplink i table>   probes and the router's own traffic
  P+U      lookup main suppress_prefixlength 0                     local and LAN routes win over classes
  P+U+1+j  fwmark <class j mark>/mask   lookup <class j table>     forwarded and local class traffic
  P+U+1+C+k fwmark <canary k mark>/mask lookup <canary k table>    a drill's canary probes (C classes)
Packets get their class mark from nftables (see nft.py). Each uplink table holds one default route via
that uplink; each class table holds the route of the uplink the engine chose for it, or a blackhole or
unreachable default. Switching a class is one atomic `route replace` in its table.

A drill's canary (engine/drills.py) is a drill-only class: the shell marks its probes itself (SO_MARK,
so nftables leaves them alone), its rule comes after the main table's like a class's, and its table is
routed via the drilled uplink while the drill checks it, unreachable otherwise. No class uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import ip_address

from failoverd.kernel import nft
from failoverd.policy.model import CanarySpec, Policy, UplinkSpec

MAIN_TABLE = 254


@dataclass(frozen=True, slots=True, order=True)
class Route:
    """A default route in one of failoverd's tables."""

    table: int
    family: int  # 4 or 6
    kind: str  # unicast, blackhole, unreachable
    gateway: str | None = None
    dev: str | None = None

    def __str__(self) -> str:
        if self.kind != "unicast":
            return f"{self.kind} default table {self.table} (ipv{self.family})"
        via = f"via {self.gateway} " if self.gateway else ""
        return f"default {via}dev {self.dev} table {self.table} (ipv{self.family})"


@dataclass(frozen=True, slots=True, order=True)
class Rule:
    priority: int
    family: int
    table: int
    fwmark: int | None = None
    fwmask: int | None = None
    suppress_prefixlen: int | None = None

    def __str__(self) -> str:
        sel = f"fwmark {self.fwmark:#x}/{self.fwmask:#x}" if self.fwmark is not None else "all"
        sup = f" suppress_prefixlength {self.suppress_prefixlen}" if self.suppress_prefixlen is not None else ""
        return f"{self.priority}: from {sel} lookup {self.table}{sup} (ipv{self.family})"


def uplink_families(u: UplinkSpec) -> tuple[int, ...]:
    if u.family is not None:
        return (u.family,)  # one of a dual-stack uplink's twins (policy/compile.py), or single-stack
    if u.next_hop is None:
        return (4, 6)  # point-to-point: a dev route serves both families
    return (ip_address(u.next_hop).version,)


def uplink_routes(u: UplinkSpec, table: int) -> list[Route]:
    return [Route(table, fam, "unicast", u.next_hop, u.interface) for fam in uplink_families(u)]


def class_families(policy: Policy, cls: str) -> tuple[int, ...]:
    c = policy.classes[cls]
    if c.family is not None:
        return (c.family,)  # nftables marks no packet of the other family for it
    fams = {f for name in c.path for f in uplink_families(policy.uplinks[name])}
    return tuple(sorted(fams))


def desired_rules(policy: Policy) -> set[Rule]:
    first, _ = policy.ownership.rule_priorities
    mask = policy.ownership.fwmark_mask
    rules: set[Rule] = set()
    families = (4, 6)
    for i, u in enumerate(policy.uplinks.values()):
        rules |= {Rule(first + i, f, u.table, u.fwmark, mask) for f in families}
    suppress = first + len(policy.uplinks)
    rules |= {Rule(suppress, f, MAIN_TABLE, suppress_prefixlen=0) for f in families}
    for j, c in enumerate(policy.classes.values()):
        rules |= {Rule(suppress + 1 + j, f, c.table, c.fwmark, mask) for f in families}
    after = suppress + 1 + len(policy.classes)
    for k, canary in enumerate(canaries(policy).values()):
        rules |= {Rule(after + k, f, canary.table, canary.fwmark, mask) for f in families}
    return rules


def canaries(policy: Policy) -> dict[str, CanarySpec]:
    """The drills' canaries, by drilled uplink, in the file's order."""
    return {name: d.canary for name, d in policy.drills.items() if d.canary is not None}


def canary_routes(policy: Policy, via: Mapping[str, str | None]) -> set[Route]:
    """`via`: drilled uplink → the uplink its canary's table routes through now, or None (unreachable)."""
    routes: set[Route] = set()
    for name, canary in canaries(policy).items():
        uplink = via.get(name)
        if uplink is not None and uplink in policy.uplinks:
            routes |= set(uplink_routes(policy.uplinks[uplink], canary.table))
        else:
            routes.add(Route(canary.table, ip_address(canary.probe.target).version, "unreachable"))
    return routes


def desired_routes(policy: Policy, assignments: Mapping[str, tuple[str | None, str]]) -> set[Route]:
    """`assignments`: class → (uplink or None, route kind: via/blackhole/unreachable/pending)."""
    routes: set[Route] = set()
    for u in policy.uplinks.values():
        routes |= set(uplink_routes(u, u.table))
    for name, (uplink, kind) in assignments.items():
        c = policy.classes.get(name)
        if c is None:
            continue
        if kind == "via" and uplink is not None and uplink in policy.uplinks:
            # Only the class's families: a point-to-point uplink carries both, a class of one family
            # gets the route of its own (the other would invite packets nftables never marks for it).
            fams = set(class_families(policy, name))
            routes |= {r for r in uplink_routes(policy.uplinks[uplink], c.table) if r.family in fams}
        elif kind in ("blackhole", "unreachable"):
            routes |= {Route(c.table, f, kind) for f in class_families(policy, name)}
    return routes


@dataclass(frozen=True, slots=True)
class Desired:
    """Everything failoverd wants in the kernel at one moment: what KernelWriter.apply makes true."""

    routes: frozenset[Route]
    rules: frozenset[Rule]
    ruleset: str  # the nftables table that classifies packets (nft.render)


def desired(
    policy: Policy,
    assignments: Mapping[str, tuple[str | None, str]],
    ruleset: str | None = None,
    canary_via: Mapping[str, str | None] | None = None,
) -> Desired:
    """The kernel state for this policy with each class on its assigned route (see desired_routes).

    `ruleset`: the policy's nftables text if the caller keeps it (`ruleset(policy)`): it changes only
    with the policy, and a failover should not build it again. `canary_via`: where each drill's canary
    goes now (engine.drills.canary_routes; none given: every canary table unreachable)."""
    text = nft.render(policy) if ruleset is None else ruleset
    routes = desired_routes(policy, assignments) | canary_routes(policy, canary_via or {})
    return Desired(frozenset(routes), frozenset(desired_rules(policy)), text)


def ruleset(policy: Policy) -> str:
    """The nftables table that classifies the policy's traffic."""
    return nft.render(policy)


def owned_tables(policy: Policy) -> set[int]:
    return (
        {u.table for u in policy.uplinks.values()}
        | {c.table for c in policy.classes.values()}
        | {c.table for c in canaries(policy).values()}
    )


def adopt(policy: Policy, routes: Iterable[Route]) -> dict[str, tuple[str | None, str]]:
    """What the kernel says each class uses now (after a restart): class → (uplink, kind)."""
    by_table = {c.table: name for name, c in policy.classes.items()}
    # A dual-stack uplink's twins share the device: the route's family tells which one it is.
    by_dev = {(u.interface, f): name for name, u in reversed(list(policy.uplinks.items())) for f in uplink_families(u)}
    found: dict[str, tuple[str | None, str]] = {}
    for r in sorted(routes):
        cls = by_table.get(r.table)
        if cls is None or cls in found:
            continue
        if r.kind == "unicast" and (r.dev or "", r.family) in by_dev:
            found[cls] = (by_dev[(r.dev or "", r.family)], "via")
        elif r.kind in ("blackhole", "unreachable"):
            found[cls] = (None, r.kind)
    return found
