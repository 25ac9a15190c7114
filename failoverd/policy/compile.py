"""Compile a validated PolicyDocument into the frozen runtime Policy, assigning tables and marks."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

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


def compile_policy(doc: s.PolicyDocument, source: str) -> m.Policy:
    own = doc.ownership
    canaries = [d.canary for d in doc.drills if d.canary is not None]
    taken_tables = {u.table for u in doc.uplinks} | {c.table for c in doc.classes} | {c.table for c in canaries}
    free_tables = iter(t for t in range(own.tables.first, own.tables.last + 1) if t not in taken_tables)
    taken_marks = {u.fwmark for u in doc.uplinks} | {c.fwmark for c in doc.classes} | {c.fwmark for c in canaries}
    needed = len(doc.uplinks) + len(doc.classes) + len(canaries)
    free_marks = iter(v for v in mark_values(own.fwmark_mask, needed + 64) if v not in taken_marks)

    by_name = {u.name: u for u in doc.uplinks}
    drilled = {d.uplink: d for d in reversed(doc.drills)}  # an uplink's first drill (verify.py refuses a second)
    uplinks: dict[str, m.UplinkSpec] = {}
    for u in doc.uplinks:
        h = u.health
        next_hop = str(u.next_hop) if u.next_hop is not None else None
        v6 = next_hop6(u)
        neighbour6 = str(v6) if v6 is not None else None
        probes = tuple(_probe(p, next_hop, neighbour6) for p in u.probes)
        uplinks[u.name] = m.UplinkSpec(
            name=u.name,
            interface=u.interface,
            next_hop=next_hop,
            next_hop6=str(u.next_hop6) if u.next_hop6 is not None else None,
            kind=u.kind,
            operator=u.operator,
            metered=u.metered,
            admit=frozenset(u.admit) if u.admit is not None else None,
            standby=m.StandbySpec(
                cold=u.standby.mode == "cold",
                activate=_command(u.standby.activate),
                deactivate=_command(u.standby.deactivate),
                activation_time=u.standby.activation_time,
                release_after=u.standby.release_after,
                retry_after=u.standby.retry_after,
                prewarm=u.standby.prewarm,
            ),
            probes=probes,
            health=m.HealthSpec(
                down_losses=h.down.consecutive_losses,
                down_loss_percent=h.down.loss_percent,
                window=h.down.window,
                degraded_rtt=h.degraded.rtt_ms / 1000 if h.degraded.rtt_ms else None,
                degraded_jitter=h.degraded.jitter_ms / 1000 if h.degraded.jitter_ms else None,
                degraded_loss_percent=h.degraded.loss_percent,
                degraded_clear_after=h.degraded.clear_after,
                up_successes=h.up.successes,
                hold_down=h.up.hold_down,
                quorum=h.quorum if h.quorum is not None else default_quorum(len(probes)),
            ),
            damping=m.DampingSpec(
                enabled=u.damping.enabled,
                penalty=u.damping.penalty,
                half_life=u.damping.half_life,
                suppress=u.damping.suppress,
                reuse=u.damping.reuse,
                max_suppress=u.damping.max_suppress,
            ),
            table=u.table if u.table is not None else next(free_tables),
            fwmark=u.fwmark if u.fwmark is not None else next(free_marks),
            verify=_verify(u, drilled.get(u.name)),
            modem=_modem(u),
        )

    classes: dict[str, m.ClassSpec] = {}
    for c in doc.classes:
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
            for mt in c.match
        )
        classes[c.name] = m.ClassSpec(
            name=c.name,
            matches=matches,
            path=tuple(c.path),
            revertive=c.revertive,
            preempt_delay=c.preempt_delay,
            avoid_degraded=c.on_degraded == "avoid",
            when_all_down=c.when_all_down,
            flush_on_failover=c.conntrack.on_failover == "flush",
            flush_on_failback=c.conntrack.on_failback == "flush",
            table=c.table if c.table is not None else next(free_tables),
            fwmark=c.fwmark if c.fwmark is not None else next(free_marks),
            redundancy=m.RedundancySpec(
                alarm=None if c.redundancy.alarm == "off" else c.redundancy.alarm, prewarm=c.redundancy.prewarm
            ),
        )

    def canary_of(d: s.Drill) -> m.CanarySpec | None:
        # After the classes: a canary takes the next free table and mark, so adding one to a drill
        # moves no uplink's or class's table.
        if d.canary is None:
            return None
        table = d.canary.table if d.canary.table is not None else next(free_tables)
        return _canary(d, table, d.canary.fwmark if d.canary.fwmark is not None else next(free_marks))

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
                m.TimeServerSpec(address=str(t.address), port=t.port, uplink=t.uplink, operator=t.operator)
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
        drills={d.uplink: _drill(d, doc.site, _valid_for(by_name.get(d.uplink), d), canary_of(d)) for d in doc.drills},
        alarms=_alarms(doc.alarms),
    )
