"""Cross-reference checks pydantic cannot make alone; each finding names its place in the file."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address

from failoverd.policy import schema as s
from failoverd.policy.compile import (
    PORT_PROTOCOLS,
    class_twins,
    default_quorum,
    dual_stack,
    file_name,
    mark_values,
    next_hop6,
    parse_dscp,
    parse_ports,
    parse_window,
    probe_family,
    protocol_number,
    uplink_evidence,
    uplink_twins,
)
from failoverd.policy.model import ALARM_KIND_NAMES

Finding = tuple[tuple[str | int, ...], str]


def verify(doc: s.PolicyDocument) -> list[Finding]:
    return [*_uplinks(doc), *_classes(doc), *_resources(doc), *_control(doc), *_drills(doc), *_alarms(doc)]


def _alarms(doc: s.PolicyDocument) -> Iterator[Finding]:
    a = doc.alarms
    names: dict[str, int] = {}
    for i, n in enumerate(a.notifiers):
        at = ("alarms", "notifiers", i)
        if n.name in names:
            yield (*at, "name"), f'notifier "{n.name}" is defined twice'
        names.setdefault(n.name, i)
        if n.kind == "webhook" and n.url is None:
            yield (*at, "url"), f'notifier "{n.name}": a webhook needs url'
        if n.kind == "exec" and not n.run:
            yield (*at, "run"), f'notifier "{n.name}": exec needs run (the command, as a list)'
        if n.kind != "webhook" and n.url is not None:
            yield (*at, "url"), f'notifier "{n.name}": url is for webhooks'
        if n.kind != "exec" and n.run is not None:
            yield (*at, "run"), f'notifier "{n.name}": run is for exec notifiers'
    known = ", ".join(names) or "none"
    for i, r in enumerate(a.route):
        for j, name in enumerate(r.notify):
            if name not in names:
                yield ("alarms", "route", i, "notify", j), f'unknown notifier "{name}" (notifiers: {known})'
        for j, kind in enumerate(r.kind or ()):
            if kind not in ALARM_KIND_NAMES:
                yield ("alarms", "route", i, "kind", j), f'unknown alarm kind "{kind}" ({", ".join(ALARM_KIND_NAMES)})'
    for i, e in enumerate(a.escalation):
        for j, name in enumerate(e.notify):
            if name not in names:
                yield ("alarms", "escalation", i, "notify", j), f'unknown notifier "{name}" (notifiers: {known})'


def _uplinks(doc: s.PolicyDocument) -> Iterator[Finding]:
    class_names = {c.name for c in doc.classes}
    seen_names: dict[str, int] = {}
    seen_ifaces: dict[str, str] = {}
    for i, u in enumerate(doc.uplinks):
        at = ("uplinks", i)
        if u.name in seen_names:
            yield (*at, "name"), f'uplink "{u.name}" is defined twice (first as uplinks.{seen_names[u.name]})'
        seen_names.setdefault(u.name, i)
        if u.interface in seen_ifaces:
            yield (
                (*at, "interface"),
                (
                    f'uplink "{u.name}": interface "{u.interface}" is already used by '
                    f'uplink "{seen_ifaces[u.interface]}"'
                ),
            )
        seen_ifaces.setdefault(u.interface, u.name)
        if u.next_hop is None and not u.point_to_point:
            yield (*at, "next_hop"), f'uplink "{u.name}": next_hop is required unless point_to_point: true'
        if u.next_hop is not None and u.point_to_point:
            yield (*at, "point_to_point"), f'uplink "{u.name}": a point-to-point uplink takes no next_hop'
        yield from _next_hop6(u, at)
        yield from _dual_stack(u, at)
        if u.metered and not u.admit:
            yield (
                (*at, "metered"),
                (f'uplink "{u.name}" is metered but admits no class: list the classes it may carry in admit'),
            )
        for j, name in enumerate(u.admit or ()):
            if name not in class_names:
                yield (*at, "admit", j), f'uplink "{u.name}" admits unknown class "{name}"'
        sb = u.standby
        if sb.mode == "cold" and sb.activate is None:
            yield (*at, "standby", "mode"), f'uplink "{u.name}": a cold standby needs standby.activate'
        if sb.mode == "hot" and (sb.activate or sb.deactivate):
            yield (*at, "standby", "mode"), f'uplink "{u.name}": activate/deactivate need standby mode: cold'
        if sb.prewarm and sb.mode == "hot":
            yield (*at, "standby", "prewarm"), f'uplink "{u.name}": prewarm is for cold standby (a hot link is up)'
        served = [c.name for c in doc.classes if u.name in c.path and (u.admit is None or c.name in u.admit)]
        if sb.prewarm and sb.mode == "cold" and not served:
            yield (
                (*at, "standby", "prewarm"),
                f'uplink "{u.name}": prewarm, but no class it admits has it in its path: nothing to warm it for',
            )
        if sb.activate is not None and sb.activate.timeout > sb.activation_time:
            yield (
                (*at, "standby", "activate", "timeout"),
                (
                    f'uplink "{u.name}": activate.timeout ({sb.activate.timeout:g}s) exceeds '
                    f"activation_time ({sb.activation_time:g}s)"
                ),
            )
        keys: Counter[str] = Counter()
        for j, p in enumerate(u.probes):
            key = f"{p.kind}:{getattr(p, 'target', getattr(p, 'url', ''))}:{getattr(p, 'port', '')}"
            keys[key] += 1
            if keys[key] == 2:
                yield (*at, "probes", j), f'uplink "{u.name}": the same probe is listed twice'
            if p.kind == "arp-nexthop" and u.next_hop is None:
                yield (
                    (*at, "probes", j, "kind"),
                    f'uplink "{u.name}": arp-nexthop needs a next_hop to ask for',
                )
            if p.kind == "arp-nexthop" and u.next_hop is not None and u.next_hop.version == 6:
                yield (
                    (*at, "probes", j, "kind"),
                    f'uplink "{u.name}": arp-nexthop asks for an IPv4 next hop, but next_hop {u.next_hop} is IPv6: '
                    "use ndp-nexthop",
                )
            if isinstance(p, s.NdpProbe):
                yield from _ndp(u, p, (*at, "probes", j))
            if p.timeout > 10 * p.interval and p.timeout > 5:
                yield (
                    (*at, "probes", j, "timeout"),
                    (f"timeout {p.timeout:g}s is over ten probe intervals: losses would be seen far too late"),
                )
        h = u.health
        targets = len(u.probes)
        for fam, count in _family_probes(u):
            quorum = h.quorum if h.quorum is not None else default_quorum(count)
            if count and quorum > count:
                what = f"{count} IPv{fam} probe target(s)" if fam else f"{count} probe target(s)"
                yield (
                    (*at, "health", "quorum"),
                    f'uplink "{u.name}": quorum {quorum} is more than its {what}, so it never goes down',
                )
        if targets == 0 and h.quorum is not None:
            yield (*at, "health", "quorum"), f'uplink "{u.name}" has no probes to take a quorum of'
        if u.probes and h.down.window < max(p.interval for p in u.probes):
            yield (
                (*at, "health", "down", "window"),
                (f"window {h.down.window:g}s is shorter than the slowest probe interval, so it holds no sample"),
            )
        d = h.degraded
        if d.loss_percent is not None and d.loss_percent >= h.down.loss_percent:
            yield (
                (*at, "health", "degraded", "loss_percent"),
                (
                    f"degraded at {d.loss_percent:g}% loss is not below down at {h.down.loss_percent:g}%: "
                    "it could never be DEGRADED"
                ),
            )
        yield from _profiles(u, at)
        dm = u.damping
        if dm.enabled and dm.reuse >= dm.suppress:
            yield (
                (*at, "damping", "reuse"),
                (
                    f"reuse ({dm.reuse:g}) must be below suppress ({dm.suppress:g}), "
                    "or a suppressed uplink is never reused"
                ),
            )


def _family_probes(u: s.Uplink) -> list[tuple[int, int]]:
    """(family, probes) per engine uplink the uplink becomes; family 0: the one uplink of a single-stack one."""
    if not dual_stack(u):
        return [(0, len(u.probes))]
    fams = [probe_family(p) or 4 for p in u.probes]  # an http probe to a name counts for IPv4
    return [(4, fams.count(4)), (6, fams.count(6))]


def _dual_stack(u: s.Uplink, at: tuple[str | int, ...]) -> Iterator[Finding]:
    """A dual-stack uplink is two engine uplinks (compile.py); what belongs to the link itself is refused."""
    if not dual_stack(u):
        return
    who = f'uplink "{u.name}" is dual-stack (compiled into "{u.name}" and "{u.name}/v6")'
    if u.standby.mode == "cold":
        yield (
            (*at, "standby", "mode"),
            f"{who}: cold standby is not supported on it yet (both would run the activate command); "
            "drop next_hop6 or make it hot",
        )
    if u.profiles:
        yield (
            (*at, "profiles"),
            f"{who}: modem profiles are not supported on it yet (both would switch the one modem); "
            "drop next_hop6 or the IPv6 probes",
        )
    counts = dict(_family_probes(u))
    if u.probes and not counts[6]:
        yield (
            (*at, "next_hop6"),
            f"{who}, but none of its probes is IPv6: its IPv6 side would be judged by carrier alone; "
            "add an IPv6 probe (ndp-nexthop at least)",
        )
    if u.probes and not counts[4]:
        yield (
            (*at, "probes"),
            f"{who}, but none of its probes is IPv4: its IPv4 side would be judged by carrier alone; "
            "add an IPv4 probe (arp-nexthop at least)",
        )


def _profiles(u: s.Uplink, at: tuple[str | int, ...]) -> Iterator[Finding]:
    if u.kind != "cellular":
        if u.profiles:
            yield (*at, "profiles"), f'uplink "{u.name}": profiles are for a cellular uplink (kind: {u.kind})'
        if u.modem is not None:
            yield (*at, "modem"), f'uplink "{u.name}": a modem is for a cellular uplink (kind: {u.kind})'
        return
    if u.modem is not None and not u.profiles:
        yield (*at, "modem"), f'uplink "{u.name}": a modem needs profiles to use it with'
    seen: dict[str, int] = {}
    for j, p in enumerate(u.profiles):
        where = (*at, "profiles", j)
        if p.name in seen:
            yield (*where, "name"), f'uplink "{u.name}": profile "{p.name}" is defined twice'
        seen.setdefault(p.name, j)
        if (p.slot is None) == (p.esim is None):
            yield (*where, "slot"), f'uplink "{u.name}": profile "{p.name}" needs exactly one of slot or esim'
        if p.plmns and p.register_to is not None and p.register_to not in p.plmns:
            yield (
                (*where, "register"),
                f'uplink "{u.name}": profile "{p.name}" registers to {p.register_to}, which is not in its plmns',
            )
        if len(set(p.plmns)) != len(p.plmns):
            yield (*where, "plmns"), f'uplink "{u.name}": profile "{p.name}" lists a PLMN twice'
        if len(set(p.rat)) != len(p.rat) or not p.rat:
            yield (*where, "rat"), f'uplink "{u.name}": profile "{p.name}": list each technology once, at least one'


def _classes(doc: s.PolicyDocument) -> Iterator[Finding]:
    uplinks = {u.name: u for u in doc.uplinks}
    seen: dict[str, int] = {}
    catch_all: str | None = None
    for i, c in enumerate(doc.classes):
        at = ("classes", i)
        if c.name in seen:
            yield (*at, "name"), f'class "{c.name}" is defined twice (first as classes.{seen[c.name]})'
        seen.setdefault(c.name, i)
        if catch_all is not None:
            yield (
                (*at, "name"),
                f'class "{c.name}" comes after catch-all class "{catch_all}" and can never match',
            )
        if not c.match:
            catch_all = catch_all or c.name
        usable = False
        for j, name in enumerate(c.path):
            if name not in uplinks:
                yield (*at, "path", j), f'class "{c.name}": path names unknown uplink "{name}"'
                continue
            if c.path.index(name) != j:
                yield (*at, "path", j), f'class "{c.name}": uplink "{name}" appears twice in the path'
            u = uplinks[name]
            if u.admit is None or c.name in u.admit:
                usable = True
        if not usable and all(n in uplinks for n in c.path):
            yield (*at, "path"), f'class "{c.name}": no uplink in its path admits it (see their admit lists)'
        if all(n in uplinks for n in c.path):
            yield from _class_families(c, uplinks, at)
        cold = [
            n
            for n in c.path
            if n in uplinks and uplinks[n].standby.mode == "cold" and c.name in (uplinks[n].admit or [c.name])
        ]
        if c.redundancy.prewarm and not cold:
            yield (
                (*at, "redundancy", "prewarm"),
                f'class "{c.name}": prewarm needs a cold standby uplink in its path that admits the class',
            )
        for j, mt in enumerate(c.match):
            mat = (*at, "match", j)
            if mt == s.Match():
                yield mat, "an empty selector matches everything: leave match out for the catch-all class"
            proto = protocol_number(mt.protocol)
            for field in ("sport", "dport"):
                spec = getattr(mt, field)
                if spec is None:
                    continue
                if proto not in PORT_PROTOCOLS:
                    yield (*mat, field), f"{field} needs protocol tcp, udp or sctp"
                try:
                    parse_ports(spec)
                except ValueError as exc:
                    yield (*mat, field), str(exc)
            for k, d in enumerate(mt.dscp or ()):
                try:
                    parse_dscp(d)
                except ValueError as exc:
                    yield (*mat, "dscp", k), str(exc)
            families = {p.version for p in (mt.src or []) + (mt.dst or [])}
            if len(families) > 1:
                yield mat, "src and dst mix IPv4 and IPv6 prefixes: split them into two selectors"
            if mt.fwmark is not None and mt.fwmark & doc.ownership.fwmark_mask:
                yield (
                    (*mat, "fwmark"),
                    (f"fwmark {mt.fwmark:#x} overlaps failoverd's own mark bits {doc.ownership.fwmark_mask:#x}"),
                )


def _class_families(c: s.TrafficClass, uplinks: dict[str, s.Uplink], at: tuple[str | int, ...]) -> Iterator[Finding]:
    """A class's selectors must match a family its path carries, or nothing could route it."""
    twins = class_twins(c, uplinks)
    if twins[0][1] is None:
        return  # a path of point-to-point uplinks only: every family, as before
    served = set().union(*(uplink_evidence(uplinks[n]) for n in c.path))
    for j, mt in enumerate(c.match):
        families = {p.version for p in (*(mt.src or ()), *(mt.dst or ()))}
        if len(families) == 1 and not families & served:
            (fam,) = families
            yield (
                (*at, "match", j),
                f'class "{c.name}": this selector matches IPv{fam} only, and no uplink in its path carries IPv{fam}',
            )


def _resources(doc: s.PolicyDocument) -> Iterator[Finding]:
    own = doc.ownership
    for name, rng in (("rule_priorities", own.rule_priorities), ("tables", own.tables)):
        if rng.first > rng.last:
            yield ("ownership", name, "last"), f"{name}: last ({rng.last}) is below first ({rng.first})"
    if own.rule_priorities.last >= 32766:
        yield (
            ("ownership", "rule_priorities", "last"),
            "rule priorities must stay below the main table's 32766",
        )
    for t in (253, 254, 255):
        if own.tables.first <= t <= own.tables.last:
            yield ("ownership", "tables"), f"table range includes {t}, a table the kernel owns"
    canaries = [(i, d) for i, d in enumerate(doc.drills) if d.canary is not None]
    by_name = {u.name: u for u in doc.uplinks}
    uplink_count = sum(len(uplink_twins(u)) for u in doc.uplinks)
    class_twins_of = {c.name: len(class_twins(c, by_name)) for c in doc.classes}
    class_count = sum(class_twins_of.values())
    needed = uplink_count + class_count + len(canaries)
    if own.tables.last - own.tables.first + 1 < needed:
        yield ("ownership", "tables"), f"table range holds fewer than the {needed} tables this policy needs"
    if len(mark_values(own.fwmark_mask, needed)) < needed:
        yield (
            ("ownership", "fwmark_mask"),
            f"fwmark_mask has room for fewer than the {needed} marks this policy needs",
        )
    rules = uplink_count + sum(max(1, len(c.match)) * class_twins_of[c.name] for c in doc.classes) + len(canaries)
    if own.rule_priorities.last - own.rule_priorities.first + 1 < 2 * rules:
        yield (
            ("ownership", "rule_priorities"),
            f"rule priority range is too small for the {2 * rules} rules needed",
        )

    tables: dict[int, str] = {}
    marks: dict[int, str] = {}
    items: list[tuple[tuple[str | int, ...], str, int | None, int | None]] = []
    items += [(("uplinks", i), f'uplink "{u.name}"', u.table, u.fwmark) for i, u in enumerate(doc.uplinks)]
    items += [(("classes", i), f'class "{c.name}"', c.table, c.fwmark) for i, c in enumerate(doc.classes)]
    items += [
        (("drills", i, "canary"), f'the canary of drill "{d.uplink}"', d.canary.table, d.canary.fwmark)
        for i, d in canaries
        if d.canary is not None
    ]
    for at, who, table, mark in items:
        if table is not None:
            if not own.tables.first <= table <= own.tables.last:
                yield (
                    (*at, "table"),
                    (f"{who}: table {table} is outside failoverd's range {own.tables.first}-{own.tables.last}"),
                )
            if table in tables:
                yield (*at, "table"), f"{who}: table {table} is already used by {tables[table]}"
            tables.setdefault(table, who)
        if mark is not None:
            if mark & ~own.fwmark_mask:
                yield (
                    (*at, "fwmark"),
                    f"{who}: fwmark {mark:#x} has bits outside fwmark_mask {own.fwmark_mask:#x}",
                )
            if mark in marks:
                yield (*at, "fwmark"), f"{who}: fwmark {mark:#x} is already used by {marks[mark]}"
            marks.setdefault(mark, who)


def _address(host: str) -> IPv4Address | IPv6Address | None:
    """The broker's address, or None for a name."""
    try:
        return ip_address(host.strip("[]"))
    except ValueError:
        return None


def _link_local6(host: str) -> bool:
    try:
        a = ip_address(host)
    except ValueError:
        return False  # a name
    return a.version == 6 and a.is_link_local


def _control(doc: s.PolicyDocument) -> Iterator[Finding]:
    by_name = {u.name: u for u in doc.uplinks}
    interfaces = {u.name: u.interface for u in doc.uplinks}
    uplinks = set(by_name)
    for i, t in enumerate(doc.clock.servers):
        at = ("clock", "servers", i)
        if t.uplink is not None and t.uplink not in uplinks:
            yield (*at, "uplink"), f'time server {t.address} names unknown uplink "{t.uplink}"'
        zone = t.address.scope_id if isinstance(t.address, IPv6Address) else None
        if t.address.is_link_local and t.address.version == 6 and t.uplink is None:
            # Its zone is the link it is on: the uplink's interface, whose mark and device it is asked by.
            yield (*at, "uplink"), f"time server {t.address} is link-local: name the uplink whose link it is on"
        elif zone is not None and t.uplink in interfaces and zone != interfaces[t.uplink]:
            yield (
                (*at, "address"),
                f'time server {t.address}: zone "{zone}" is not uplink "{t.uplink}"\'s interface '
                f'"{interfaces[t.uplink]}" (leave the zone out: the uplink\'s interface is used)',
            )
        elif t.uplink is not None:
            u = by_name[t.uplink]
            families = {4, 6} if all(f is None for _, f in uplink_twins(u)) else uplink_evidence(u)
            if t.address.version not in families:
                yield (
                    ("clock", "servers", i, "address"),
                    f'time server {t.address} is IPv{t.address.version}, and uplink "{t.uplink}" carries '
                    f"IPv{min(families)} only",
                )
    mq = doc.control.mqtt
    if mq.enabled:
        # The site is a level of the MQTT topics: it cannot be the fleet's level, span levels or be a wildcard.
        if doc.site == "fleet" or any(c in doc.site for c in "/+#\0"):
            yield ("site",), f'site "{doc.site}" cannot be an MQTT topic level: not "fleet", no "/", "+", "#"'
        if any(c in mq.topic_prefix for c in "+#\0"):
            yield ("control", "mqtt", "topic_prefix"), f'topic_prefix "{mq.topic_prefix}" cannot hold "+" or "#"'
    if mq.uplink is not None and mq.uplink not in uplinks:
        yield ("control", "mqtt", "uplink"), f'MQTT names unknown uplink "{mq.uplink}"'
    broker = _address(mq.host)
    if mq.enabled and broker is not None and mq.uplink in by_name:
        # As for a time server: only a twin of the broker's family has a route to it (policy/compile.py).
        u = by_name[mq.uplink]
        families = {4, 6} if all(f is None for _, f in uplink_twins(u)) else uplink_evidence(u)
        if broker.version not in families:
            yield (
                ("control", "mqtt", "host"),
                f'MQTT broker {mq.host} is IPv{broker.version}, and uplink "{mq.uplink}" carries '
                f"IPv{min(families)} only",
            )
    if mq.enabled and _link_local6(mq.host) and "%" not in mq.host and mq.uplink is None:
        # The session rides the first usable uplink otherwise, and another uplink's link has no such broker.
        yield ("control", "mqtt", "uplink"), f"MQTT broker {mq.host} is link-local: name the uplink whose link it is on"
    for field in ("ca_file", "cert_file", "cert_key_file"):
        if getattr(mq, field) is not None and not mq.tls:
            yield ("control", "mqtt", field), f"MQTT {field} is used only over TLS: add tls: true"
    if mq.cert_key_file is not None and mq.cert_file is None:
        yield ("control", "mqtt", "cert_key_file"), "MQTT cert_key_file is the key of cert_file: give cert_file"
    if doc.clock.max_error >= doc.clock.panic:
        yield ("clock", "max_error"), "max_error must be below panic"


def _drills(doc: s.PolicyDocument) -> Iterator[Finding]:
    uplinks = {u.name: u for u in doc.uplinks}
    seen: dict[str, int] = {}
    for i, d in enumerate(doc.drills):
        at = ("drills", i)
        u = uplinks.get(file_name(d.uplink))
        if u is None:
            yield (*at, "uplink"), f'drill names unknown uplink "{d.uplink}" (uplinks: {", ".join(uplinks)})'
            continue
        if d.uplink != u.name and not dual_stack(u):
            yield (
                (*at, "uplink"),
                f'drill names "{d.uplink}", but uplink "{u.name}" is not dual-stack: drill "{u.name}"',
            )
            continue
        if d.uplink in seen:
            yield (*at, "uplink"), f'uplink "{d.uplink}" is drilled twice (first in drills.{seen[d.uplink]})'
        seen.setdefault(d.uplink, i)
        if d.valid_for is not None and u.verify is not None and d.valid_for != u.verify.within:
            # Both say how long a proof of working lasts (compile.proof_lifetime): one number, or none.
            yield (
                (*at, "valid_for"),
                (
                    f'drill of "{d.uplink}": valid_for ({d.valid_for:g}s) contradicts the uplink\'s verify.within '
                    f"({u.verify.within:g}s): both say how long a proof that it works lasts; drop valid_for "
                    "(it follows verify.within) or make them equal"
                ),
            )
        if (d.every is None) == (d.window is None):
            yield at, f'drill of "{d.uplink}": give either every (an interval) or window (e.g. Sun 02:00-04:00)'
        fam = 6 if d.uplink != u.name else 4 if dual_stack(u) else 0
        if not dict(_family_probes(u)).get(fam, len(u.probes)):
            yield (*at, "uplink"), f'drill of "{d.uplink}": the uplink has no probes, so nothing can pass through it'
        if u.metered and d.max_bytes is None:
            yield (
                (*at, "uplink"),
                f'drill of "{d.uplink}": the uplink is metered: bound the drill with max_bytes',
            )
        if d.window is not None:
            length = parse_window(d.window).length
            if d.jitter + d.max_duration > length:
                yield (
                    (*at, "jitter"),
                    (
                        f'drill of "{d.uplink}": jitter ({d.jitter:g}s) plus max_duration ({d.max_duration:g}s) '
                        f"does not fit in the {length:g}s window"
                    ),
                )
        elif d.every is not None and d.jitter >= d.every:
            yield (*at, "jitter"), f'drill of "{d.uplink}": jitter ({d.jitter:g}s) must be below every ({d.every:g}s)'
        if d.canary is not None:
            yield from _canary(d, d.canary, u, at)
        if u.standby.mode == "cold" and d.max_duration <= u.standby.activation_time:
            yield (
                (*at, "max_duration"),
                (
                    f'drill of "{d.uplink}": max_duration ({d.max_duration:g}s) leaves no time for probes after '
                    f"the activation_time ({u.standby.activation_time:g}s)"
                ),
            )


def _next_hop6(u: s.Uplink, at: tuple[str | int, ...]) -> Iterator[Finding]:
    v6 = u.next_hop6
    if v6 is None:
        return
    if v6.version != 6:
        yield (*at, "next_hop6"), f'uplink "{u.name}": next_hop6 {v6} is not an IPv6 address'
    elif u.point_to_point:
        yield (*at, "next_hop6"), f'uplink "{u.name}": a point-to-point uplink takes no next_hop6'
    elif u.next_hop is not None and u.next_hop.version == 6:
        yield (
            (*at, "next_hop6"),
            f'uplink "{u.name}": next_hop {u.next_hop} is IPv6 already; next_hop6 is for an uplink whose '
            "next_hop is IPv4",
        )
    elif v6.is_multicast or v6.is_unspecified or v6.is_loopback:
        yield (*at, "next_hop6"), f'uplink "{u.name}": next_hop6 {v6} cannot be a neighbour on the link'


def _ndp(u: s.Uplink, p: s.NdpProbe, at: tuple[str | int, ...]) -> Iterator[Finding]:
    if p.target is None:
        if next_hop6(u) is None and u.next_hop6 is None:  # a next_hop6 given is judged by _next_hop6
            yield (
                (*at, "kind"),
                f'uplink "{u.name}": ndp-nexthop needs an IPv6 next hop to ask for: give the uplink next_hop6 '
                "(or an IPv6 next_hop), or the probe a target",
            )
    elif p.target.version != 6:
        yield (
            (*at, "target"),
            f'uplink "{u.name}": ndp-nexthop asks an IPv6 neighbour, and {p.target} is IPv4 '
            "(arp-nexthop asks IPv4 ones)",
        )
    elif p.target.is_multicast or p.target.is_unspecified or p.target.is_loopback:
        yield (*at, "target"), f'uplink "{u.name}": ndp-nexthop target {p.target} cannot be a neighbour on the link'


def _canary(d: s.Drill, c: s.Canary, u: s.Uplink, drill_at: tuple[str | int, ...]) -> Iterator[Finding]:
    at = (*drill_at, "canary")
    who = f'the canary of drill "{d.uplink}"'
    if c.kind == "tcp" and c.port is None:
        yield (*at, "port"), f"{who}: a tcp canary needs the port of the service it connects to"
    if c.kind == "icmp" and c.port is not None:
        yield (*at, "port"), f"{who}: an icmp canary takes no port"
    if c.timeout > c.interval:
        yield (
            (*at, "timeout"),
            f"{who}: timeout ({c.timeout:g}s) exceeds interval ({c.interval:g}s): one canary probe is sent at a time",
        )
    carries = 6 if d.uplink != u.name else 4 if dual_stack(u) else u.next_hop.version if u.next_hop else None
    if carries is not None and carries != c.target.version:
        hint = f' (drill "{u.name}/v6" for an IPv6 canary)' if dual_stack(u) and carries == 4 else ""
        yield (
            (*at, "target"),
            f'{who}: target {c.target} is IPv{c.target.version} but uplink "{d.uplink}" routes IPv{carries}{hint}',
        )
    rounds = c.rounds if c.rounds is not None else d.rounds
    needs = rounds * c.interval + (u.standby.activation_time if u.standby.mode == "cold" else 0.0)
    if needs > d.max_duration:
        yield (
            (*at, "rounds"),
            (
                f"{who}: {rounds} rounds every {c.interval:g}s"
                + (f" after the activation_time ({u.standby.activation_time:g}s)" if u.standby.mode == "cold" else "")
                + f" take {needs:g}s, more than the drill's max_duration ({d.max_duration:g}s)"
            ),
        )
