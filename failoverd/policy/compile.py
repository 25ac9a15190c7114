"""Compile a validated PolicyDocument into the frozen runtime Policy, assigning tables and marks.

Theory of operation: IPv6 on equal terms
----------------------------------------
The engine judges one health per uplink and places a class on one uplink. A dual-stack link can be
dead for one family and fine for the other (an ISP's IPv6 blackholed, a router's RA gone), and a
dual-stack class may then need IPv4 on one uplink and IPv6 on another. Rather than teach the pure
engine about families, compilation hands it one uplink and one class per family:

- An uplink with an IPv4 next_hop and a next_hop6, or a point-to-point one with probes of both
  families, becomes NAME (IPv4: its IPv4 probes, arp-nexthop, routes via next_hop) and NAME/v6
  (IPv6: its IPv6 probes, ndp-nexthop, routes via next_hop6 or the device): the same interface, each
  with its own table, mark, health, damping and hold-down. Any other uplink stays one, of the family
  of its next hop (a point-to-point one with probes of one family carries both, as before).
- A class whose selectors can match both families and whose path has uplinks of both becomes CLASS
  (its IPv4 selectors, the IPv4 uplinks of its path in order) and CLASS/v6 (the IPv6 ones). A class
  of one family, by its selectors or by its path, stays one class of that family. Each carries its
  family, and nftables marks only packets of it (kernel/nft.py), so no packet is marked for a table
  that has no route of its family and leaks to the main table.
- `/v6` cannot clash: policy names match schema.Name, which has no `/`. What a file names (admit,
  clock servers, mqtt.uplink) follows the twins: admit lists the file's class names and admits each
  twin to the uplink of its family; a time server goes over the twin of its address's family; a
  drill names NAME (the IPv4 twin) or NAME/v6.
- Cold standby and modem profiles belong to the link, not to a family; two engine uplinks would each
  run the activate command or switch the modem. verify.py refuses them on a dual-stack uplink.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from urllib.parse import urlsplit

from failoverd.policy import model as m
from failoverd.policy import schema as s

PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
PORT_PROTOCOLS = {6, 17, 132}
# RFC 2474 class selectors, RFC 2597 assured forwarding, RFC 3246 EF, RFC 5865 VA, RFC 8622 LE.
DSCP_NAMES = {
    "DF": 0,
    "BE": 0,
    "LE": 1,
    "EF": 46,
    "VA": 44,
    **{f"CS{i}": 8 * i for i in range(8)},
    **{f"AF{c}{d}": 8 * c + 2 * d for c in range(1, 5) for d in range(1, 4)},
}


def parse_ports(spec: int | str) -> tuple[int, int]:
    """`5060`, `"5060"` or `"10000-20000"` → an inclusive range."""
    if isinstance(spec, int):
        lo = hi = spec
    else:
        mt = re.fullmatch(r"\s*(\d+)\s*(?:[-:]\s*(\d+))?\s*", spec)
        if mt is None:
            raise ValueError(f"{spec!r} is not a port or a range such as 10000-20000")
        lo = int(mt.group(1))
        hi = int(mt.group(2)) if mt.group(2) else lo
    if not (1 <= lo <= hi <= 65535):
        raise ValueError(f"port range {lo}-{hi} must lie within 1-65535, low end first")
    return lo, hi


def parse_dscp(spec: int | str) -> int:
    if isinstance(spec, int):
        if not 0 <= spec <= 63:
            raise ValueError(f"DSCP {spec} is outside 0-63")
        return spec
    value = DSCP_NAMES.get(spec.upper())
    if value is None:
        raise ValueError(f"unknown DSCP name {spec!r}: use EF, VA, AF11..AF43, CS0..CS7, LE, DF or 0-63")
    return value


def protocol_number(spec: str | int | None) -> int | None:
    if spec is None or isinstance(spec, int):
        return spec
    return PROTOCOLS[spec]


def mark_values(mask: int, count: int) -> list[int]:
    """The first `count` mark values that fit in `mask`, starting at 1 in the mask's lowest bit."""
    shift = (mask & -mask).bit_length() - 1
    return [(i << shift) for i in range(1, count + 1) if (i << shift) & ~mask == 0]


def default_quorum(targets: int) -> int:
    """A majority of the probe targets must fail; with one or two targets, all of them."""
    return max(1, targets // 2 + 1) if targets > 2 else max(1, targets)


def _command(c: s.Command | None) -> m.CommandSpec | None:
    return None if c is None else m.CommandSpec(argv=tuple(c.run), timeout=c.timeout)


def next_hop6(u: s.Uplink) -> IPv4Address | IPv6Address | None:
    """The uplink's IPv6 next hop: next_hop6, or next_hop where that is IPv6 (an IPv6-only uplink)."""
    if u.next_hop6 is not None:
        return u.next_hop6 if u.next_hop6.version == 6 else None  # verify.py refuses an IPv4 one
    return u.next_hop if u.next_hop is not None and u.next_hop.version == 6 else None


def probe_family(p: s.Probe) -> int | None:
    """The family a probe tests: its target's, arp-nexthop 4, ndp-nexthop 6; None for an http probe
    to a name (it tests the family of its uplink, which resolves the name in that family)."""
    match p:
        case s.IcmpProbe() | s.UdpEchoProbe() | s.TcpProbe() | s.DnsProbe():
            return p.target.version
        case s.ArpProbe():
            return 4
        case s.NdpProbe():
            return 6
        case s.HttpProbe():
            host = urlsplit(p.url).hostname or ""
            try:
                return ip_address(host).version
            except ValueError:
                return None
    raise AssertionError(p)


def dual_stack(u: s.Uplink) -> bool:
    """The uplink is compiled into NAME and NAME/v6 (see the theory of operation above)."""
    if u.point_to_point:
        return {probe_family(p) for p in u.probes} >= {4, 6}
    return u.next_hop is not None and u.next_hop.version == 4 and next_hop6(u) is not None


def uplink_family(u: s.Uplink) -> int | None:
    """The one family a single uplink carries (None: point-to-point, both)."""
    return u.next_hop.version if u.next_hop is not None else None


def match_families(mt: s.Match) -> set[int]:
    """The families a selector can match: its prefixes' (verify.py refuses a mix), else both."""
    return {p.version for p in (*(mt.src or ()), *(mt.dst or ()))} or {4, 6}


def _probe(p: s.Probe, next_hop: str | None, neighbour6: str | None) -> m.ProbeSpec:
    base = m.ProbeSpec(kind=p.kind, target="", interval=p.interval, timeout=p.timeout)
    match p:
        case s.IcmpProbe():
            return replace(base, target=str(p.target))
        case s.UdpEchoProbe() | s.TcpProbe():
            return replace(base, target=str(p.target), port=p.port)
        case s.DnsProbe():
            return replace(base, target=str(p.target), query=p.query, record=p.record)
        case s.HttpProbe():
            return replace(base, target=p.url, expect_status=p.expect_status)
        case s.ArpProbe():
            return replace(base, target=next_hop or "")
        case s.NdpProbe():
            return replace(base, target=str(p.target) if p.target is not None else neighbour6 or "")
    raise AssertionError(p)


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_window(text: str) -> m.WindowSpec:
    """`Sun 02:00-04:00`, `sat,sun 23:00-01:00` or `daily 03:00-05:00` (schema.WINDOW_PATTERN checked it)."""
    days_text, span = text.strip().lower().split(None, 1)
    days = range(7) if days_text == "daily" else (_DAYS.index(d.strip()) for d in days_text.split(","))
    start, end = (int(h) * 60 + int(mm) for h, mm in (t.strip().split(":") for t in span.split("-")))
    return m.WindowSpec(frozenset(days), start, end, text.strip())


def _metrics(spec: s.Metrics | None) -> m.MetricsSpec | None:
    if spec is None:
        return None
    address, port = s.parse_listen(spec.listen)
    return m.MetricsSpec(address=address, port=port)


def drill_offset(site: str, uplink: str, jitter: float) -> float:
    """Where in [0, jitter) this gateway's drill of `uplink` starts: the same every time for one site,
    spread over the jitter across a fleet (a hash of the names, so the engine needs no randomness)."""
    digest = hashlib.sha256(f"{site}/{uplink}".encode()).digest()
    return jitter * int.from_bytes(digest[:8], "big") / 2**64


def proof_lifetime(u: s.Uplink, d: s.Drill | None) -> float | None:
    """How long a proof that the uplink works lasts (None: for good). `verify.within` and a drill's
    `valid_for` both say it, so they are one number: verify.within when given (valid_for then follows
    it; verify.py rejects the two given and different), else the drill's valid_for, else the drill's
    default (1.5 intervals, or 8 days for a weekly window)."""
    if d is None:
        return u.verify.within if u.verify is not None else None
    return _valid_for(u, d)


def _valid_for(u: s.Uplink | None, d: s.Drill) -> float:
    if u is not None and u.verify is not None:
        return u.verify.within
    if d.valid_for is not None:
        return d.valid_for
    return 1.5 * d.every if d.every is not None else 8 * 86400.0


def _verify(u: s.Uplink, d: s.Drill | None) -> m.VerifySpec | None:
    if u.verify is not None:
        return m.VerifySpec(u.verify.within, u.verify.alarm)
    within = proof_lifetime(u, d)
    return m.VerifySpec(within, None) if within is not None else None  # a drill's proof, with no alarm asked


def _modem(u: s.Uplink) -> m.ModemSpec | None:
    if not u.profiles:
        return None
    sw = u.profile_switch
    return m.ModemSpec(
        equipment=u.modem,
        profiles=tuple(
            m.ProfileSpec(p.name, p.slot, p.esim, p.operator, p.apn, tuple(p.plmns), p.register_to, tuple(p.rat))
            for p in u.profiles
        ),
        register_time=sw.register_time,
        slot_switch_time=sw.slot_switch_time,
        searching_limit=sw.searching_limit,
        while_covered=sw.while_covered,
        revertive=sw.revertive,
        revert_after=sw.revert_after,
        retry_after=sw.retry_after,
    )


def _alarms(a: s.Alarms) -> m.AlarmsSpec:
    def some(xs: Sequence[str] | None) -> frozenset[str] | None:
        return None if xs is None else frozenset(xs)

    return m.AlarmsSpec(
        notifiers={
            n.name: m.NotifierSpec(n.name, n.kind, n.url, n.format, n.ca_file, tuple(n.run or ()), n.socket, n.timeout)
            for n in a.notifiers
        },
        route=tuple(
            m.AlarmRouteSpec(some(r.severity), some(r.kind), some(r.subject), tuple(r.notify)) for r in a.route
        ),
        escalation=tuple(sorted((e.after, tuple(e.notify)) for e in a.escalation)),
        repeat=a.repeat,
    )


def _canary(d: s.Drill, table: int, fwmark: int) -> m.CanarySpec | None:
    c = d.canary
    if c is None:
        return None
    port = c.port if c.port is not None or c.kind != "udp-echo" else 7
    probe = m.ProbeSpec(kind=c.kind, target=str(c.target), interval=c.interval, timeout=c.timeout, port=port)
    return m.CanarySpec(
        probe=probe,
        rounds=c.rounds if c.rounds is not None else d.rounds,
        max_loss_percent=c.max_loss_percent if c.max_loss_percent is not None else d.max_loss_percent,
        table=table,
        fwmark=fwmark,
    )


def _drill(d: s.Drill, site: str, valid: float, canary: m.CanarySpec | None = None) -> m.DrillSpec:
    return m.DrillSpec(
        uplink=d.uplink,
        every=d.every,
        window=parse_window(d.window) if d.window is not None else None,
        offset=drill_offset(site, d.uplink, d.jitter),
        rounds=d.rounds,
        max_loss_percent=d.max_loss_percent,
        max_bytes=d.max_bytes,
        max_duration=d.max_duration,
        valid_for=valid,
        retry_after=d.retry_after,
        severity=d.severity,
        canary=canary,
    )


def _health(u: s.Uplink, probes: int) -> m.HealthSpec:
    h = u.health
    return m.HealthSpec(
        down_losses=h.down.consecutive_losses,
        down_loss_percent=h.down.loss_percent,
        window=h.down.window,
        degraded_rtt=h.degraded.rtt_ms / 1000 if h.degraded.rtt_ms else None,
        degraded_jitter=h.degraded.jitter_ms / 1000 if h.degraded.jitter_ms else None,
        degraded_loss_percent=h.degraded.loss_percent,
        degraded_clear_after=h.degraded.clear_after,
        up_successes=h.up.successes,
        hold_down=h.up.hold_down,
        quorum=h.quorum if h.quorum is not None else default_quorum(probes),
    )


def _standby(u: s.Uplink) -> m.StandbySpec:
    return m.StandbySpec(
        cold=u.standby.mode == "cold",
        activate=_command(u.standby.activate),
        deactivate=_command(u.standby.deactivate),
        activation_time=u.standby.activation_time,
        release_after=u.standby.release_after,
        retry_after=u.standby.retry_after,
        prewarm=u.standby.prewarm,
    )


def _damping(u: s.Uplink) -> m.DampingSpec:
    return m.DampingSpec(
        enabled=u.damping.enabled,
        penalty=u.damping.penalty,
        half_life=u.damping.half_life,
        suppress=u.damping.suppress,
        reuse=u.damping.reuse,
        max_suppress=u.damping.max_suppress,
    )


def uplink_twins(u: s.Uplink) -> list[tuple[str, m.Family | None]]:
    """The engine uplinks a file's uplink becomes: (name, family), IPv4 first."""
    if dual_stack(u):
        return [(u.name, 4), (u.name + m.V6_SUFFIX, 6)]
    fam = uplink_family(u)
    return [(u.name, 4 if fam == 4 else 6 if fam == 6 else None)]


def uplink_evidence(u: s.Uplink) -> set[int]:
    """The families an uplink's health speaks for: its twins', its next hop's, or for a
    point-to-point uplink of one family of probes that family (IPv4 when it has none)."""
    if dual_stack(u):
        return {4, 6}
    fam = uplink_family(u)
    if fam is not None:
        return {fam}
    return {f for p in u.probes if (f := probe_family(p)) is not None} or {4}


def class_twins(
    c: s.TrafficClass, uplinks: Mapping[str, s.Uplink]
) -> list[tuple[str, m.Family | None, tuple[str, ...]]]:
    """The engine classes a file's class becomes: (name, family, path), IPv4 first (see the module's
    theory of operation). A path of point-to-point uplinks only stays one class for both families,
    as before there were families; otherwise a point-to-point uplink rides in the path of each
    family, and counts for the family its probes speak for."""
    known = [uplinks[n] for n in c.path if n in uplinks]
    if not any(dual_stack(u) or uplink_family(u) is not None for u in known):
        return [(c.name, None, tuple(c.path))]
    selected = set().union(*(match_families(mt) for mt in c.match)) if c.match else {4, 6}
    served = set().union(*(uplink_evidence(u) for u in known))
    families = sorted(selected & served) or sorted(selected)
    out: list[tuple[str, m.Family | None, tuple[str, ...]]] = []
    for fam in families:
        name = c.name + m.V6_SUFFIX if fam == 6 and len(families) == 2 else c.name
        family: m.Family = 4 if fam == 4 else 6
        path = tuple(n for u in known for n, f in uplink_twins(u) if f in (None, fam))
        out.append((name, family, path))
    return out


def file_name(name: str) -> str:
    """The file's name of an engine uplink or class: NAME for NAME/v6."""
    return name.removesuffix(m.V6_SUFFIX)


def time_server_uplink(t: s.TimeServer, twins: dict[str, list[tuple[str, m.Family | None]]]) -> str | None:
    """A time server bound to a dual-stack uplink goes over the twin of its address's family."""
    if t.uplink is None:
        return None
    return next((n for n, f in twins.get(t.uplink, []) if f in (None, t.address.version)), t.uplink)


def compile_policy(doc: s.PolicyDocument, source: str) -> m.Policy:
    own = doc.ownership
    canaries = [d.canary for d in doc.drills if d.canary is not None]
    taken_tables = {u.table for u in doc.uplinks} | {c.table for c in doc.classes} | {c.table for c in canaries}
    free_tables = iter(t for t in range(own.tables.first, own.tables.last + 1) if t not in taken_tables)
    taken_marks = {u.fwmark for u in doc.uplinks} | {c.fwmark for c in doc.classes} | {c.fwmark for c in canaries}
    twins = {u.name: uplink_twins(u) for u in doc.uplinks}
    by_name = {u.name: u for u in doc.uplinks}
    class_split = {c.name: class_twins(c, by_name) for c in doc.classes}
    extra = sum(len(ts) - 1 for ts in twins.values()) + sum(len(cs) - 1 for cs in class_split.values())
    needed = len(doc.uplinks) + len(doc.classes) + len(canaries) + extra
    free_marks = iter(v for v in mark_values(own.fwmark_mask, needed + 64) if v not in taken_marks)
    # The file's uplinks, classes and canaries take tables and marks first, in the file's order, and the
    # IPv6 twins after them all: making an uplink dual-stack moves no table or mark of what the file
    # names (an IPv6 twin's may move; a reload reconciles it like any other change).
    resources: dict[str, tuple[int, int]] = {}
    for u in doc.uplinks:
        resources[u.name] = (
            u.table if u.table is not None else next(free_tables),
            u.fwmark if u.fwmark is not None else next(free_marks),
        )
    for c in doc.classes:
        resources[c.name] = (
            c.table if c.table is not None else next(free_tables),
            c.fwmark if c.fwmark is not None else next(free_marks),
        )
    canary_resources: dict[str, tuple[int, int]] = {}
    for d in doc.drills:
        if d.canary is not None:
            canary_resources[d.uplink] = (
                d.canary.table if d.canary.table is not None else next(free_tables),
                d.canary.fwmark if d.canary.fwmark is not None else next(free_marks),
            )
    for name, _ in [t for ts in twins.values() for t in ts] + [(n, f) for cs in class_split.values() for n, f, _ in cs]:
        if name not in resources:
            resources[name] = (next(free_tables), next(free_marks))

    class_family = {n: f for cs in class_split.values() for n, f, _ in cs}

    def admitted(u: s.Uplink, family: m.Family | None) -> frozenset[str] | None:
        # The file's admit names classes; each twin class goes to the twin uplink of its family.
        if u.admit is None:
            return None
        return frozenset(
            n
            for c in u.admit
            for n, f, _ in class_split.get(c, [(c, None, ())])
            if family is None or f is None or f == family
        )

    drilled = {d.uplink: d for d in reversed(doc.drills)}  # an uplink's first drill (verify.py refuses a second)
    uplinks: dict[str, m.UplinkSpec] = {}
    for u in doc.uplinks:
        next_hop = str(u.next_hop) if u.next_hop is not None else None
        v6 = next_hop6(u)
        neighbour6 = str(v6) if v6 is not None else None
        split = len(twins[u.name]) == 2
        for name, family in twins[u.name]:
            # An http probe to a name counts for IPv4 (its twin resolves the name in its own family).
            kept = [p for p in u.probes if not split or (probe_family(p) or 4) == family]
            probes = tuple(_probe(p, next_hop, neighbour6) for p in kept)
            table, fwmark = resources[name]
            uplinks[name] = m.UplinkSpec(
                name=name,
                interface=u.interface,
                next_hop=(neighbour6 if family == 6 else next_hop) if split else next_hop,
                next_hop6=None if split else (str(u.next_hop6) if u.next_hop6 is not None else None),
                kind=u.kind,
                operator=u.operator,
                metered=u.metered,
                admit=admitted(u, family),
                standby=_standby(u),
                probes=probes,
                health=_health(u, len(probes)),
                damping=_damping(u),
                table=table,
                fwmark=fwmark,
                verify=_verify(u, drilled.get(name)),
                modem=_modem(u),
                family=family,
                base=u.name if split else "",
            )

    classes: dict[str, m.ClassSpec] = {}
    for c in doc.classes:
        split = len(class_split[c.name]) == 2
        for name, family, path in class_split[c.name]:
            selectors = [mt for mt in c.match if family is None or family in match_families(mt)]
            matches = tuple(
                m.MatchSpec(
                    src=tuple(str(p) for p in mt.src or ()),
                    dst=tuple(str(p) for p in mt.dst or ()),
                    protocol=protocol_number(mt.protocol),
                    sport=parse_ports(mt.sport) if mt.sport is not None else None,
                    dport=parse_ports(mt.dport) if mt.dport is not None else None,
                    dscp=tuple(parse_dscp(d) for d in mt.dscp or ()),
                    fwmark=mt.fwmark,
                    iif=mt.iif,
                )
                for mt in selectors
            )
            table, fwmark = resources[name]
            classes[name] = m.ClassSpec(
                name=name,
                matches=matches,
                path=path,
                revertive=c.revertive,
                preempt_delay=c.preempt_delay,
                avoid_degraded=c.on_degraded == "avoid",
                when_all_down=c.when_all_down,
                flush_on_failover=c.conntrack.on_failover == "flush",
                flush_on_failback=c.conntrack.on_failback == "flush",
                table=table,
                fwmark=fwmark,
                redundancy=m.RedundancySpec(
                    alarm=None if c.redundancy.alarm == "off" else c.redundancy.alarm, prewarm=c.redundancy.prewarm
                ),
                family=class_family[name],
                base=c.name if split else "",
            )

    def canary_of(d: s.Drill) -> m.CanarySpec | None:
        if d.canary is None:
            return None
        table, fwmark = canary_resources[d.uplink]
        return _canary(d, table, fwmark)

    def reaction(r: s.ClockReaction) -> m.ClockReactionSpec:
        return m.ClockReactionSpec(
            alarm=r.alarm, severity=r.severity, distrust=frozenset(r.distrust), avoid_uplinks=r.avoid_uplinks
        )

    ck = doc.clock
    mq = doc.control.mqtt
    return m.Policy(
        site=doc.site,
        ownership=m.OwnershipSpec(
            route_protocol=own.route_protocol,
            rule_priorities=(own.rule_priorities.first, own.rule_priorities.last),
            tables=(own.tables.first, own.tables.last),
            fwmark_mask=own.fwmark_mask,
        ),
        uplinks=uplinks,
        classes=classes,
        clock=m.ClockSpec(
            servers=tuple(
                m.TimeServerSpec(
                    address=str(t.address), port=t.port, uplink=time_server_uplink(t, twins), operator=t.operator
                )
                for t in ck.servers
            ),
            chrony=ck.chrony,
            gpsd=ck.gpsd,
            max_error=ck.max_error,
            panic=ck.panic,
            min_agreeing_classes=ck.min_agreeing_classes,
            interval=ck.interval,
            drift=ck.drift_ppm * 1e-6,
            hysteresis=ck.hysteresis,
            on_suspect=reaction(ck.on_suspect),
            on_insane=reaction(ck.on_insane),
        ),
        control=m.ControlSpec(
            socket=doc.control.socket,
            socket_mode=doc.control.socket_mode,
            socket_group=doc.control.socket_group,
            max_override=doc.control.max_override,
            mqtt=m.MqttSpec(
                enabled=mq.enabled,
                host=mq.host,
                port=mq.port,
                topic_prefix=mq.topic_prefix,
                client_id=mq.client_id,
                username=mq.username,
                password_file=mq.password_file,
                tls=mq.tls,
                ca_file=mq.ca_file,
                cert_file=mq.cert_file,
                cert_key_file=mq.cert_key_file,
                uplink=mq.uplink,
                keys_file=mq.keys_file,
                max_age=mq.max_age,
                keepalive=max(1, math.ceil(mq.keepalive)),  # MQTT counts it in whole seconds
                unreachable_alarm=mq.unreachable_alarm,
            ),
            metrics=_metrics(doc.control.metrics),
        ),
        source=source,
        drills={
            d.uplink: _drill(d, doc.site, _valid_for(by_name.get(file_name(d.uplink)), d), canary_of(d))
            for d in doc.drills
        },
        alarms=_alarms(doc.alarms),
    )
