"""The policy file's shape: pydantic models that validate YAML at the edge (strict, unknown keys rejected)."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field

from failoverd.hostport import unbracket
from failoverd.policy.durations import parse_duration
from failoverd.policy.model import (
    AlarmSeverity,
    ClockSeverity,
    ConntrackAction,
    DnsRecord,
    OnDegraded,
    Rat,
    StandbyMode,
    UplinkKind,
    WallTimeFeature,
    WhenAllDown,
    WhileCovered,
)


def _parse_address(value: object) -> object:
    if isinstance(value, str):
        try:
            return ip_address(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from exc
    return value


def _parse_prefix(value: object) -> object:
    if isinstance(value, str):
        try:
            return ip_network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a prefix (host bits set, or not an address/length)") from exc
    return value


def _parse_mode(value: object) -> object:
    if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value):
        return int(value.replace("o", ""), 8)
    if isinstance(value, str):
        # pydantic turns ValueError, not TypeError, into a located validation error.
        raise ValueError(f'{value!r} is not a file mode: write it quoted in octal, e.g. "0660"')  # noqa: TRY004
    return value


def _parse_int_or_hex(value: object) -> object:
    if isinstance(value, str) and re.fullmatch(r"0[xX][0-9a-fA-F]+|\d+", value):
        return int(value, 0)
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
NonNegDuration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Address = Annotated[IPv4Address | IPv6Address, BeforeValidator(_parse_address)]
Prefix = Annotated[IPv4Network | IPv6Network, BeforeValidator(_parse_prefix)]
Mark = Annotated[int, BeforeValidator(_parse_int_or_hex), Field(ge=1, le=0xFFFFFFFF)]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,30}$")]
Percent = Annotated[float, Field(ge=0, le=100)]
# An uplink as a drill names it: NAME, or NAME/v6 for the IPv6 twin of a dual-stack uplink (compile.py).
UplinkRef = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,30}(/v6)?$")]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class IntRange(Strict):
    first: int = Field(ge=1)
    last: int = Field(ge=1)


class Ownership(Strict):
    """Kernel objects failoverd may create, so that it cleans up only its own."""

    # 0-4 are the kernel's, 186-196 FRR's, 42 babel, 12 bird: 74 is free in iproute2's rt_protos.
    route_protocol: int = Field(default=74, ge=5, le=254)
    # Between the local table's 0 and main's 32766, away from wg-quick (32764/5) and Tailscale (5210-5270).
    rule_priorities: IntRange = IntRange(first=20000, last=20999)
    # Tables 253-255 are the kernel's; 52 is Tailscale's. 7100-7199 is ours.
    tables: IntRange = IntRange(first=7100, last=7199)
    # Bits of the packet mark failoverd may set and match on (kube-proxy uses 0x4000/0x8000, Tailscale 0xff0000).
    fwmark_mask: Mark = 0x7F000000


class Command(Strict):
    """A command run without a shell: argv, not a string, so that no quoting can go wrong."""

    run: list[str] = Field(min_length=1)
    timeout: Duration = 30.0


class Standby(Strict):
    mode: StandbyMode = "hot"
    activate: Command | None = None
    # Also run at every start for a cold uplink no class is routed via (a crash may have left it on),
    # so it must be idempotent: `ip link set dev X down` and `systemctl stop UNIT` are.
    deactivate: Command | None = None
    # How long the link may take from the activate command to passing traffic.
    activation_time: Duration = 60.0
    # Keep a cold link up this long after the last class left it, so that a flapping primary does not cycle it.
    release_after: NonNegDuration = 120.0
    # After a failed activation, try again this much later if the plan still needs the link.
    retry_after: Duration = 60.0
    # Activate this cold link as soon as any class it serves is down to one usable terrestrial uplink
    # (as a class's redundancy.prewarm does for the first cold uplink of its path).
    prewarm: bool = False


class ProbeBase(Strict):
    interval: Duration = 1.0
    timeout: Duration = 1.0
    name: str | None = None


class IcmpProbe(ProbeBase):
    kind: Literal["icmp"]
    target: Address


class UdpEchoProbe(ProbeBase):
    kind: Literal["udp-echo"]
    target: Address
    port: int = Field(default=7, ge=1, le=65535)


class TcpProbe(ProbeBase):
    kind: Literal["tcp"]
    target: Address
    port: int = Field(ge=1, le=65535)


class DnsProbe(ProbeBase):
    kind: Literal["dns"]
    target: Address
    query: str = "."
    record: DnsRecord = "NS"


class HttpProbe(ProbeBase):
    kind: Literal["http"]
    url: str = Field(pattern=r"^https?://")
    expect_status: int = Field(default=200, ge=100, le=599)


class ArpProbe(ProbeBase):
    kind: Literal["arp-nexthop"]


class NdpProbe(ProbeBase):
    kind: Literal["ndp-nexthop"]
    # The neighbour to solicit; none: the uplink's IPv6 next hop (next_hop6, or an IPv6 next_hop).
    target: Address | None = None


Probe = Annotated[
    IcmpProbe | UdpEchoProbe | TcpProbe | DnsProbe | HttpProbe | ArpProbe | NdpProbe, Field(discriminator="kind")
]


class DownWhen(Strict):
    consecutive_losses: int = Field(default=3, ge=1)
    loss_percent: Percent = 50.0
    window: Duration = 10.0


class DegradedWhen(Strict):
    rtt_ms: float | None = Field(default=None, gt=0)
    jitter_ms: float | None = Field(default=None, gt=0)
    loss_percent: Percent | None = None
    # Metrics must stay below the thresholds this long before DEGRADED clears (hysteresis).
    clear_after: NonNegDuration = 10.0


class UpWhen(Strict):
    successes: int = Field(default=3, ge=1)
    # After DOWN, the uplink must stay clean this long before it is used again.
    hold_down: NonNegDuration = 5.0


class Health(Strict):
    down: DownWhen = DownWhen()
    degraded: DegradedWhen = DegradedWhen()
    up: UpWhen = UpWhen()
    # Down when this many probe targets have failed; default: a majority of them.
    quorum: int | None = Field(default=None, ge=1)


class Damping(Strict):
    """Flap damping after RFC 2439 section 4.2, on the monotonic clock."""

    enabled: bool = True
    penalty: float = Field(default=1000.0, gt=0)
    half_life: Duration = 30.0
    suppress: float = Field(default=2000.0, gt=0)
    reuse: float = Field(default=750.0, gt=0)
    max_suppress: Duration = 300.0


class Verify(Strict):
    """The proof that a backup works expires: UP (hot, or cold after an activation or drill) within this long."""

    within: Duration
    alarm: AlarmSeverity = "warning"


def _check_mccmnc(value: object) -> object:
    """A PLMN id, 3GPP TS 23.003 section 12.1: a 3-digit MCC and a 2- or 3-digit MNC, as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        # pydantic turns ValueError, not TypeError, into a located validation error.
        raise ValueError(f'write the MCCMNC {value} quoted ("{value}"): a number loses leading zeros')  # noqa: TRY004
    if isinstance(value, str) and not re.fullmatch(r"[0-9]{5,6}", value):
        raise ValueError(f'{value!r} is not an MCCMNC: a 3-digit MCC and a 2- or 3-digit MNC, such as "20408"')
    return value


Mccmnc = Annotated[str, BeforeValidator(_check_mccmnc)]


def _default_rat() -> list[Rat]:
    return ["5g", "4g"]


class Profile(Strict):
    """A SIM slot or eSIM profile, the networks it may use and how to reach them."""

    name: Name
    slot: int | None = Field(default=None, ge=1, le=8)
    esim: str | None = Field(default=None, pattern=r"^[0-9A-Fa-f]{18,22}$")  # an ICCID
    operator: str | None = None
    apn: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]{0,99}$")
    plmns: list[Mccmnc] = Field(default_factory=list)
    # Manual registration to this network (a partner the subscription may roam on); none: automatic.
    # (`register` in the file: the attribute name would shadow pydantic's BaseModel.register.)
    register_to: Mccmnc | None = Field(default=None, alias="register")
    rat: list[Rat] = Field(default_factory=_default_rat)


class ProfileSwitch(Strict):
    """What switching profiles costs, and when the engine may pay for it."""

    register_time: Duration = 15.0
    # A SIM-slot switch re-initialises the modem (it leaves and comes back): tens of seconds.
    slot_switch_time: Duration = 40.0
    searching_limit: Duration = 60.0
    # While every class the uplink serves is usable elsewhere: wait (switch nothing), register (only
    # cheap re-registrations, the default), any (slot switches too).
    while_covered: WhileCovered = "register"
    revertive: bool = True
    revert_after: NonNegDuration = 600.0
    retry_after: NonNegDuration = 300.0


class Uplink(Strict):
    name: Name
    interface: str = Field(pattern=r"^[A-Za-z0-9_.:@-]{1,15}$")
    next_hop: Address | None = None
    # A dual-stack uplink's IPv6 next hop, where next_hop is the IPv4 one (a router's link-local
    # address, often); the ndp-nexthop probe asks for it.
    next_hop6: Address | None = None
    point_to_point: bool = False
    kind: UplinkKind = "wired"
    # The network operator behind the link. `carrier:` is the older spelling, still accepted; the
    # field is not called that here because carrier also means the link's carrier (up/down).
    operator: str | None = Field(default=None, validation_alias=AliasChoices("operator", "carrier"))
    metered: bool = False
    # Classes allowed on this uplink; none listed means every class (and is refused on a metered uplink).
    admit: list[Name] | None = None
    standby: Standby = Standby()
    probes: list[Probe] = Field(default_factory=list)
    health: Health = Health()
    damping: Damping = Damping()
    table: int | None = Field(default=None, ge=1, le=0xFFFFFFFF)
    fwmark: Mark | None = None
    # Alarm when the uplink has not been seen working for longer than this (none: never asked).
    verify: Verify | None = None
    # A cellular uplink's modem (its equipment id; none: the only one) and its ordered profiles.
    modem: str | None = None
    profiles: list[Profile] = Field(default_factory=list)
    profile_switch: ProfileSwitch = ProfileSwitch()


PortSpec = Annotated[int | str, Field(union_mode="left_to_right")]


class Match(Strict):
    src: list[Prefix] | None = None
    dst: list[Prefix] | None = None
    protocol: Literal["tcp", "udp", "icmp", "icmpv6", "sctp"] | int | None = None
    sport: PortSpec | None = None
    dport: PortSpec | None = None
    dscp: list[Annotated[int | str, Field(union_mode="left_to_right")]] | None = None
    fwmark: Mark | None = None
    iif: str | None = None


class Conntrack(Strict):
    on_failover: ConntrackAction = "flush"
    on_failback: ConntrackAction = "flush"


class Redundancy(Strict):
    """When the class is down to its last usable uplink: an alarm of this severity, and pre-warming."""

    alarm: Literal["off", "info", "warning", "critical"] = "off"
    # Start activating the path's cold standby as soon as one usable uplink is left, so that losing
    # it costs the detection time rather than the standby's whole activation time.
    prewarm: bool = False


class TrafficClass(Strict):
    name: Name
    # Selectors are OR-ed; the fields inside one selector are AND-ed. No match: the catch-all class.
    match: list[Match] = Field(default_factory=list)
    path: list[Name] = Field(min_length=1)
    revertive: bool = True
    preempt_delay: NonNegDuration = 30.0
    on_degraded: OnDegraded = "avoid"
    when_all_down: WhenAllDown = "unreachable"
    conntrack: Conntrack = Conntrack()
    redundancy: Redundancy = Redundancy()
    table: int | None = Field(default=None, ge=1, le=0xFFFFFFFF)
    fwmark: Mark | None = None


class TimeServer(Strict):
    address: Address
    port: int = Field(default=123, ge=1, le=65535)
    uplink: Name | None = None
    operator: str | None = None


class ClockReaction(Strict):
    alarm: bool = True
    severity: ClockSeverity = "critical"
    # Features that depend on wall time and are marked unreliable in this state.
    distrust: list[WallTimeFeature] = Field(default_factory=list)
    # Prefer uplinks whose time sources agree: an uplink over which only falsetickers answer may be
    # tampered with (or lead to a lying network); classes avoid it while another uplink is usable.
    avoid_uplinks: bool = False


class Clock(Strict):
    servers: list[TimeServer] = Field(default_factory=list)
    chrony: bool = True
    # gpsd's JSON feed ("host:port"), where a GPS receiver is fitted: one more independent class.
    gpsd: str | None = Field(default=None, pattern=r"^[^:\s]+(:\d{1,5})?$")
    max_error: Duration = 0.5
    panic: Duration = 1000.0
    min_agreeing_classes: int = Field(default=3, ge=1)
    # How often the servers are asked; steps are watched every second regardless.
    interval: Duration = 16.0
    # Undisciplined oscillators stay within ~100 ppm: how fast an error bound grows with age.
    drift_ppm: float = Field(default=100.0, gt=0, le=100000)  # beyond 500 only tests want
    # Agreeing rounds in a row before leaving SUSPECT or INSANE.
    hysteresis: int = Field(default=3, ge=1)
    on_suspect: ClockReaction = ClockReaction(severity="warning")
    on_insane: ClockReaction = ClockReaction(distrust=["certificates", "signed-commands", "schedules"])


def _parse_host(value: object) -> object:
    """A broker's name or address; an IPv6 one bare or in brackets (stored bare)."""
    if isinstance(value, str):
        host = unbracket(value.strip())  # raises ValueError, which pydantic locates at the key
        if ":" in host:
            try:
                ip_address(host)
            except ValueError:
                raise ValueError(f"{value!r} is not a name or an address (a port goes in port:)") from None
        return host
    return value


class Mqtt(Strict):
    enabled: bool = False
    # A name or an address: broker.example, 192.0.2.10, 2001:db8::10 or [2001:db8::10].
    host: Annotated[str, BeforeValidator(_parse_host)] = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    topic_prefix: str = "failoverd"
    client_id: str | None = None
    username: str | None = None
    password_file: str | None = None
    tls: bool = False
    ca_file: str | None = None  # the CA that signed the broker's certificate (default: the system's)
    cert_file: str | None = None  # a client certificate (PEM) for brokers that require one
    cert_key_file: str | None = None  # its private key, if not in cert_file
    uplink: Name | None = None
    keys_file: str | None = None  # NAME ed25519 PUBKEY per line: who may send signed commands (re-read on reload)
    max_age: Duration = 300.0  # a signed command older than this is refused (while the clock is trusted)
    keepalive: Duration = 15.0  # the broker publishes the last will 1.5 keepalives after the gateway vanishes
    unreachable_alarm: Duration = 30.0  # without a session this long: the mqtt-unreachable alarm


def _check_listen(value: object) -> object:
    if isinstance(value, str):
        parse_listen(value)  # raises ValueError, which pydantic locates at the key
    return value


def parse_listen(value: str) -> tuple[str, int]:
    """ADDRESS:PORT ("127.0.0.1:9469", "[::1]:9469") as (address, port). An address, not a name: binding must not wait
    for DNS, which may be reachable only over the uplink that just failed."""
    mt = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]*):(\d{1,5})", value.strip())
    if mt is None:
        raise ValueError(f'{value!r} is not ADDRESS:PORT: write e.g. "127.0.0.1:9469" or "[::1]:9469"')
    host, port = mt.group(1), mt.group(2)
    bracketed = host.startswith("[")
    try:
        address = ip_address(host.strip("[]"))
    except ValueError as exc:
        bare = host.strip("[]")
        raise ValueError(f"{value!r}: {bare!r} is not an IPv4 or IPv6 address (names are not resolved)") from exc
    if (address.version == 6) != bracketed:
        raise ValueError(f'{value!r}: write an IPv6 address in brackets ("[::1]:9469"), an IPv4 one without')
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: port {port} is not between 1 and 65535")
    return str(address), int(port)


class Metrics(Strict):
    """The Prometheus endpoint (off unless this section is given)."""

    listen: Annotated[str, BeforeValidator(_check_listen)]  # ADDRESS:PORT, e.g. "127.0.0.1:9469"


class Control(Strict):
    socket: str = "/run/failoverd/control.sock"
    socket_mode: Annotated[int, BeforeValidator(_parse_mode), Field(ge=0, le=0o777)] = 0o660
    socket_group: str | None = None
    max_override: Duration = 86400.0
    mqtt: Mqtt = Mqtt()
    metrics: Metrics | None = None


def _parse_bytes(value: object) -> object:
    if isinstance(value, str):
        mt = re.fullmatch(r"\s*(\d+)\s*(k|M|G)?B?\s*", value)
        if mt is None:
            raise ValueError(f"{value!r} is not a size: write bytes (250000) or a value such as 500kB, 2MB")
        return int(mt.group(1)) * {None: 1, "k": 1000, "M": 1000**2, "G": 1000**3}[mt.group(2)]
    return value


Bytes = Annotated[int, BeforeValidator(_parse_bytes), Field(gt=0)]
# "Sun 02:00-04:00", "Sat,Sun 23:30-01:00", "daily 03:00-04:00": days, then a span of UTC time.
WINDOW_PATTERN = (
    r"^\s*(daily|(mon|tue|wed|thu|fri|sat|sun)(\s*,\s*(mon|tue|wed|thu|fri|sat|sun))*)"
    r"\s+([01]\d|2[0-3]):[0-5]\d\s*-\s*([01]\d|2[0-3]):[0-5]\d\s*$"
)


def _check_window(value: object) -> object:
    if isinstance(value, str) and not re.fullmatch(WINDOW_PATTERN, value, re.IGNORECASE):
        raise ValueError(
            f"{value!r} is not a window: write days and a UTC span, e.g. Sun 02:00-04:00 or daily 03:00-05:00"
        )
    return value


class Canary(Strict):
    """A drill's end-to-end test flow: probes to a service (the dispatch centre's, say) that cross the
    drilled backup in a drill-only class of their own, while production traffic stays where it is."""

    target: Address
    kind: Literal["icmp", "udp-echo", "tcp"]
    port: int | None = Field(default=None, ge=1, le=65535)  # udp-echo: 7 unless given; tcp: required
    interval: Duration = 1.0
    timeout: Duration = 1.0  # at most the interval: one canary probe is in flight at a time
    rounds: int | None = Field(default=None, ge=1, le=1000)  # default: the drill's rounds
    max_loss_percent: Percent | None = None  # default: the drill's
    # The drill-only class's routing table and mark (default: the next free ones after the classes').
    table: int | None = Field(default=None, ge=1, le=0xFFFFFFFF)
    fwmark: Mark | None = None


class Drill(Strict):
    """A backup proved on a schedule: activated (if cold), probed through, released."""

    uplink: UplinkRef  # a dual-stack uplink's NAME drills its IPv4 side, NAME/v6 its IPv6 side
    every: Duration | None = None  # an interval, or ...
    # ... a weekly maintenance window, UTC: "Sun 02:00-04:00"; postponed while the clock is not trusted.
    window: Annotated[str, BeforeValidator(_check_window)] | None = None
    # The drill starts up to this much after the interval or the window opens, at an offset derived
    # from the site's name: a fleet of gateways on one policy does not drill at one instant.
    jitter: NonNegDuration = 0.0
    rounds: int = Field(default=5, ge=1, le=1000)  # probe rounds that must pass through the uplink
    max_loss_percent: Percent = 20.0
    max_bytes: Bytes | None = None  # required on a metered uplink
    max_duration: Duration = 600.0
    valid_for: Duration | None = None  # how long a pass verifies the uplink (default: 1.5 intervals, or 8 days)
    retry_after: Duration = 900.0  # when it was not safe to drill
    severity: AlarmSeverity = "critical"  # of the alarm when the uplink fails its drill
    canary: Canary | None = None  # an end-to-end flow through the backup, checked with the uplink's probes


class Notifier(Strict):
    """Where alarms are sent: an HTTP endpoint, a command, or the system journal."""

    name: Name
    kind: Literal["webhook", "exec", "journal"]
    url: str | None = Field(default=None, pattern=r"^https?://")  # webhook
    format: Literal["plain", "alertmanager"] = "plain"  # webhook: failoverd's record, or Alertmanager's v2 API
    ca_file: str | None = None  # webhook over https: the CA of its certificate (default: the system's)
    run: list[str] | None = Field(default=None, min_length=1)  # exec: argv; the alarm as JSON on stdin
    socket: str = "/run/systemd/journal/socket"  # journal: journald's native socket
    timeout: Duration = 10.0  # one delivery attempt


class AlarmRoute(Strict):
    """Alarms that match (every field given must: any listed value) go to `notify`."""

    severity: list[AlarmSeverity] | None = None
    kind: list[str] | None = None  # alarm kinds: uplink-down, class-down, redundancy, ...
    subject: list[str] | None = None  # uplink, class, "clock", "mqtt", "policy"
    notify: list[Name] = Field(min_length=1)


class Escalation(Strict):
    """An alarm still raised and not acknowledged this long after it was raised also goes to `notify`."""

    after: Duration
    notify: list[Name] = Field(min_length=1)


class Alarms(Strict):
    notifiers: list[Notifier] = Field(default_factory=list)
    route: list[AlarmRoute] = Field(default_factory=list)  # the first rule that matches an alarm
    escalation: list[Escalation] = Field(default_factory=list)  # in order of `after`
    repeat: Duration | None = None  # sent again this often while raised and not acknowledged


class PolicyDocument(Strict):
    """a policy: site, uplinks, classes"""

    site: str = Field(min_length=1)
    ownership: Ownership = Ownership()
    uplinks: list[Uplink] = Field(min_length=1)
    classes: list[TrafficClass] = Field(min_length=1)
    clock: Clock = Clock()
    control: Control = Control()
    drills: list[Drill] = Field(default_factory=list)
    alarms: Alarms = Alarms()
