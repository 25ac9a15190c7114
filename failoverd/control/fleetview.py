"""The operations centre's view of a fleet, from the gateways' retained statuses: conditions, a summary, filters.

Theory of operation: every gateway keeps one retained status on the broker (`control/mqtt.py`), so the
fleet's state is the set of those documents, read in one subscription. Nothing here touches the network or
reads a clock: `now` (wall seconds, the statuses' `at` are wall time) is a parameter.

Each site gets a set of conditions, each defined from its retained status alone:
- `offline`: `online` is false: the gateway stopped cleanly, or the broker published its last will;
- `stale`: `online` is true but `at` is older than the stale limit: the status is no longer refreshed (every
  60 s, `STATUS_EVERY`), so the gateway, its broker, or the bridge between them is cut off, and the last will
  may never come (a regional broker that dies takes its gateways' wills with it);
- `online`: neither of those;
- `backup`: online, and a class goes via an uplink other than the first of its path (`primary`);
- `satellite`: online, and a class goes via an uplink whose kind is satellite (`kinds`);
- `no-route`: online, and a class is routed via no uplink (blackhole, unreachable, throw);
- `bad-clock`: online, and the clock checker's verdict is suspect or insane;
- `unreadable`: the retained message is not a status document (another writer, an old format).
Statuses from gateways older than `primary`/`kinds` in the status say nothing about `backup`/`satellite`.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

STALE_AFTER = 180.0  # s: three missed refreshes of the retained status (STATUS_EVERY is 60 s)
CONDITIONS = ("online", "offline", "stale", "backup", "satellite", "no-route", "bad-clock", "unreadable")
BAD_CLOCK = frozenset({"suspect", "insane"})
# --where keys: each names a question about one site; values are alternatives separated by "|".
WHERE_KEYS = {
    "site": "the site's name (shell wildcards: dispatch-*)",
    "state": f"one of the conditions: {', '.join(CONDITIONS)}",
    "class": "the site has this class (with uplink= or kind=: that class goes via it)",
    "uplink": "a class goes via this uplink",
    "kind": "a class goes via an uplink of this kind (wired, cellular, satellite)",
    "clock": "the clock verdict (sane, holdover, suspect, insane, unknown; bad = suspect or insane)",
    "alarm": "an active alarm whose id starts with this (uplink-down, clock-insane, ...)",
}


class WhereError(ValueError):
    """A --where that cannot be understood; the message names the part at fault."""


@dataclass(frozen=True, slots=True)
class SiteView:
    """One site as its retained status tells it."""

    site: str
    conditions: frozenset[str]
    age_s: float | None  # since the status was written (None: no usable `at`)
    clock: str  # "-" when offline or unreadable
    routes: Mapping[str, str]  # class -> "via UPLINK" or a route kind
    kinds: Mapping[str, str]  # uplink -> kind
    alarms: tuple[str, ...]
    why: str  # an offline gateway's reason ("stopped", "connection lost")
    document: Mapping[str, Any] = field(repr=False)


def _routes(doc: Mapping[str, Any]) -> dict[str, str]:
    classes = doc.get("classes")
    return {str(k): str(v) for k, v in classes.items()} if isinstance(classes, dict) else {}


def _via(route: str) -> str | None:
    return route[4:] if route.startswith("via ") else None


def read_status(site: str, payload: bytes | str, now: float, stale_after: float = STALE_AFTER) -> SiteView:
    """A retained status, as read off `<prefix>/<site>/status`. The site is the topic's (the broker lets a
    gateway write only its own), whatever the document claims."""
    try:
        doc = json.loads(payload)
    except (ValueError, TypeError):
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("online"), bool):
        return SiteView(site, frozenset({"unreadable"}), None, "-", {}, {}, (), "", {})
    at = doc.get("at")
    age = now - float(at) if isinstance(at, int | float) and not isinstance(at, bool) else None
    if not doc["online"]:
        return SiteView(site, frozenset({"offline"}), age, "-", {}, {}, (), str(doc.get("why") or ""), doc)
    if age is None or age > stale_after:
        # Not refreshed: what it says may no longer be so; the other conditions are not judged.
        return SiteView(site, frozenset({"stale"}), age, str(doc.get("clock") or "-"), _routes(doc), {}, (), "", doc)
    routes = _routes(doc)
    kinds_doc, primary_doc = doc.get("kinds"), doc.get("primary")
    kinds = {str(k): str(v) for k, v in kinds_doc.items()} if isinstance(kinds_doc, dict) else {}
    primary = {str(k): str(v) for k, v in primary_doc.items()} if isinstance(primary_doc, dict) else {}
    alarms_doc = doc.get("alarms")
    alarms = tuple(sorted(str(a) for a in alarms_doc)) if isinstance(alarms_doc, dict) else ()
    clock = str(doc.get("clock") or "unknown")
    conditions = {"online"}
    for cls, route in routes.items():
        via = _via(route)
        if via is None:
            conditions.add("no-route")
            continue
        if cls in primary and primary[cls] != via:
            conditions.add("backup")
        if kinds.get(via) == "satellite":
            conditions.add("satellite")
    if clock in BAD_CLOCK:
        conditions.add("bad-clock")
    return SiteView(site, frozenset(conditions), age, clock, routes, kinds, alarms, "", doc)


@dataclass(frozen=True, slots=True)
class Where:
    """`--where key=value[|value...],key=value`: every key must hold, any of a key's values."""

    terms: Mapping[str, tuple[str, ...]]

    @classmethod
    def parse(cls, text: str) -> Where:
        terms: dict[str, tuple[str, ...]] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            key, eq, value = part.partition("=")
            key = key.strip()
            values = tuple(v.strip() for v in value.split("|") if v.strip())
            if not eq or not values:
                raise WhereError(f"--where {part!r}: write KEY=VALUE (keys: {', '.join(WHERE_KEYS)})")
            if key not in WHERE_KEYS:
                raise WhereError(f"--where {part!r}: no key {key!r} (keys: {', '.join(WHERE_KEYS)})")
            if key in terms:
                raise WhereError(f"--where {part!r}: {key} given twice (alternatives go in one: {key}=a|b)")
            if key == "state":
                unknown = [v for v in values if v not in CONDITIONS]
                if unknown:
                    raise WhereError(f"--where {part!r}: no state {unknown[0]!r} (states: {', '.join(CONDITIONS)})")
            terms[key] = values
        return cls(terms)

    def __call__(self, s: SiteView) -> bool:
        t = self.terms
        if "site" in t and not any(fnmatch.fnmatchcase(s.site, g) for g in t["site"]):
            return False
        if "state" in t and not s.conditions.intersection(t["state"]):
            return False
        if "clock" in t:
            wanted = {c for v in t["clock"] for c in (BAD_CLOCK if v == "bad" else {v})}
            if s.clock not in wanted:
                return False
        if "alarm" in t and not any(a.startswith(p) for a in s.alarms for p in t["alarm"]):
            return False
        # class, uplink and kind ask about the same (class, route) pair: "dispatch via sat".
        classes = [c for c in s.routes if "class" not in t or c in t["class"]]
        if "class" in t and not classes:
            return False
        if "uplink" in t or "kind" in t:
            vias = [_via(s.routes[c]) for c in classes]
            return any(
                via is not None
                and ("uplink" not in t or via in t["uplink"])
                and ("kind" not in t or s.kinds.get(via) in t["kind"])
                for via in vias
            )
        return True


EVERYTHING = Where({})
LABELS = {
    "backup": "on backup",
    "satellite": "on satellite",
    "no-route": "with a class on no route",
    "bad-clock": "with a bad clock",
    "unreadable": "unreadable",
}


@dataclass(frozen=True, slots=True)
class Summary:
    sites: int
    counts: Mapping[str, int]  # condition -> how many sites have it

    def line(self) -> str:
        c = self.counts
        head = f"{self.sites} sites: {c['online']} online, {c['offline']} offline, {c['stale']} stale"
        return head + "; " + ", ".join(f"{c[k]} {label}" for k, label in LABELS.items())


def summarise(views: Iterable[SiteView]) -> Summary:
    counts = dict.fromkeys(CONDITIONS, 0)
    n = 0
    for v in views:
        n += 1
        for c in v.conditions:
            counts[c] += 1
    return Summary(n, counts)


def row(v: SiteView) -> str:
    """One line per site: name, state, status age, clock, where its classes go (or why it is offline)."""
    state = next(c for c in ("unreadable", "offline", "stale", "online") if c in v.conditions)
    flags = ",".join(c for c in CONDITIONS[3:] if c in v.conditions and c != "unreadable") or "-"
    age = "-" if v.age_s is None else f"{max(0.0, v.age_s):.0f}s"
    what = v.why if state == "offline" else ", ".join(f"{c} {r}" for c, r in v.routes.items())
    return f"{v.site:<20} {state:<10} {age:>6} {v.clock:<8} {flags:<28} {what}".rstrip()


HEADER = f"{'SITE':<20} {'STATE':<10} {'AGE':>6} {'CLOCK':<8} {'CONDITIONS':<28} CLASSES"


def as_json(v: SiteView) -> dict[str, Any]:
    return {
        "site": v.site,
        "conditions": sorted(v.conditions),
        "age_s": None if v.age_s is None else round(v.age_s, 1),
        "status": dict(v.document) or None,
    }
