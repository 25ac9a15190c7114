"""The compiled policy: frozen dataclasses that the engine and runtime read; no pydantic in here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

# The policy language's closed vocabularies; schema.py validates the file against these same aliases.
UplinkKind = Literal["wired", "cellular", "satellite"]
ProbeKind = Literal["icmp", "udp-echo", "tcp", "dns", "http", "arp-nexthop", "ndp-nexthop"]
DnsRecord = Literal["A", "AAAA", "NS", "SOA"]
StandbyMode = Literal["hot", "cold"]
OnDegraded = Literal["avoid", "stay"]
WhenAllDown = Literal["blackhole", "unreachable", "keep"]
ConntrackAction = Literal["flush", "keep"]
ClockSeverity = Literal["warning", "critical"]
WallTimeFeature = Literal["certificates", "signed-commands", "schedules"]
AlarmSeverity = Literal["info", "warning", "critical"]
Rat = Literal["5g", "4g", "3g", "2g"]
WhileCovered = Literal["wait", "register", "any"]
# The alarm kinds a route may name; engine/alarms.py keys its table (subject, default severity) by them.
Family = Literal[4, 6]
# The name of an uplink's or a class's IPv6 twin (policy/compile.py): policy names match
# ^[a-z][a-z0-9_-]{0,30}$, so no name a user writes can contain it.
V6_SUFFIX = "/v6"
AlarmKind = Literal[
    "uplink-down",
    "uplink-degraded",
    "damped",
    "standby-failed",
    "unverified",
    "drill-failed",
    "class-backup",
    "class-down",
    "redundancy",
    "clock",
    "mqtt-unreachable",
    "reload-refused",
]
ALARM_KIND_NAMES: tuple[AlarmKind, ...] = get_args(AlarmKind)


@dataclass(frozen=True, slots=True)
class CommandSpec:
    argv: tuple[str, ...]
    timeout: float


@dataclass(frozen=True, slots=True)
class StandbySpec:
    cold: bool
    activate: CommandSpec | None
    deactivate: CommandSpec | None
    activation_time: float
    release_after: float
    retry_after: float
    prewarm: bool = False  # warm it whenever a class it serves is down to one usable hot uplink


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    kind: ProbeKind
    target: str  # address, URL, or the next hop for arp-/ndp-nexthop: what the operator reads in status
    interval: float
    timeout: float
    port: int | None = None
    query: str | None = None
    record: DnsRecord | None = None
    expect_status: int | None = None
    key: str = field(init=False, compare=False)  # identity inside its uplink, as probe results name it

    def __post_init__(self) -> None:
        port = f":{self.port}" if self.port is not None else ""
        object.__setattr__(self, "key", f"{self.kind}:{self.target}{port}")


@dataclass(frozen=True, slots=True)
class HealthSpec:
    down_losses: int
    down_loss_percent: float
    window: float
    degraded_rtt: float | None  # seconds
    degraded_jitter: float | None  # seconds
    degraded_loss_percent: float | None
    degraded_clear_after: float
    up_successes: int
    hold_down: float
    quorum: int  # failed targets that make the uplink DOWN


@dataclass(frozen=True, slots=True)
class DampingSpec:
    enabled: bool
    penalty: float
    half_life: float
    suppress: float
    reuse: float
    max_suppress: float

    @property
    def ceiling(self) -> float:
        """RFC 2439 4.2: the penalty never exceeds what decays to `reuse` within max_suppress."""
        return float(self.reuse * 2.0 ** (self.max_suppress / self.half_life))


@dataclass(frozen=True, slots=True)
class VerifySpec:
    """How fresh the proof that an uplink works must be: its last UP (or drill) within `within` seconds.

    One number for every proof: `verify.within`, or for a drilled uplink without it the drill's
    `valid_for` (which otherwise follows verify.within; compile.proof_lifetime)."""

    within: float
    alarm: AlarmSeverity | None  # None: the proof expires (redundancy stops counting on it) silently


@dataclass(frozen=True, slots=True)
class RedundancySpec:
    """What a class asks when it is down to its last usable uplink."""

    alarm: AlarmSeverity | None = None  # None: no alarm
    prewarm: bool = False  # activate the path's cold standby then, not only when the last uplink fails


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    """One way a cellular modem can reach a mobile network: a SIM (slot or eSIM profile), the PLMNs it
    may use, optionally a manual registration to a partner network, the APN and the RAT preference."""

    name: str
    slot: int | None  # physical SIM slot (ModemManager's SimSlots, 1-based) ...
    esim: str | None  # ... or an eSIM profile id (ICCID)
    operator: str | None
    apn: str
    plmns: tuple[str, ...]  # MCCMNC allowed; empty: whatever the SIM's home network picks
    register: str | None  # MCCMNC to register to manually (Modem3gpp.Register); None: automatic
    rat: tuple[Rat, ...]  # preferred access technologies, best first

    @property
    def sim(self) -> str:
        """The SIM this profile uses: profiles with the same SIM switch by re-registering only."""
        return f"slot {self.slot}" if self.esim is None else f"esim {self.esim}"

    @property
    def plmn(self) -> str | None:
        """The network it registers to: the manual one, else the first allowed (None: automatic)."""
        return self.register if self.register is not None else (self.plmns[0] if self.plmns else None)


@dataclass(frozen=True, slots=True)
class ModemSpec:
    """A cellular uplink's modem and its ordered profiles (engine/profiles.py), with what a switch costs."""

    equipment: str | None  # ModemManager's EquipmentIdentifier (IMEI); None: the only modem
    profiles: tuple[ProfileSpec, ...]  # in order of preference, like a class's path
    register_time: float  # a re-registration to another PLMN, until registered with a bearer
    slot_switch_time: float  # a SIM-slot (or eSIM) switch re-initialises the modem: on top of register_time
    searching_limit: float  # searching (or idle) this long without registering: the profile has failed
    while_covered: WhileCovered  # switches allowed while every class it serves is usable elsewhere
    revertive: bool  # back to the first profile once it has been failed for revert_after
    revert_after: float  # hold-down of a failed profile before failback, doubled per repeat failure
    retry_after: float  # a failed profile is not chosen again for this long (failover)

    def profile(self, name: str) -> ProfileSpec:
        return next(p for p in self.profiles if p.name == name)

    def switch_time(self, frm: ProfileSpec, to: ProfileSpec) -> float:
        return self.register_time + (0.0 if frm.sim == to.sim else self.slot_switch_time)


@dataclass(frozen=True, slots=True)
class UplinkSpec:
    name: str
    interface: str
    next_hop: str | None
    kind: UplinkKind
    operator: str | None  # the mobile (or satellite) network operator: an outage can take all its uplinks
    metered: bool
    admit: frozenset[str] | None  # None: every class
    standby: StandbySpec
    probes: tuple[ProbeSpec, ...]
    health: HealthSpec
    damping: DampingSpec
    table: int
    fwmark: int
    verify: VerifySpec | None = None
    modem: ModemSpec | None = None  # a cellular uplink with profiles
    # The IPv6 next hop of a dual-stack uplink whose next_hop is IPv4 (often link-local, fe80::1): asked
    # for by the ndp-nexthop probe. An IPv6-only uplink names its router in next_hop instead.
    next_hop6: str | None = None
    # The one address family this uplink carries (a dual-stack uplink is compiled into one uplink per
    # family); None: a point-to-point uplink that carries both on one health judgement.
    family: Family | None = None
    base: str = ""  # the name the policy file gives it: NAME for both NAME and NAME/v6 ("": same as name)

    def admits(self, cls: str) -> bool:
        return self.admit is None or cls in self.admit

    @property
    def file_name(self) -> str:
        return self.base or self.name


@dataclass(frozen=True, slots=True)
class MatchSpec:
    src: tuple[str, ...] = ()
    dst: tuple[str, ...] = ()
    protocol: int | None = None
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    dscp: tuple[int, ...] = ()
    fwmark: int | None = None
    iif: str | None = None


@dataclass(frozen=True, slots=True)
class ClassSpec:
    name: str
    matches: tuple[MatchSpec, ...]  # empty: the catch-all class
    path: tuple[str, ...]
    revertive: bool
    preempt_delay: float
    avoid_degraded: bool
    when_all_down: WhenAllDown
    flush_on_failover: bool
    flush_on_failback: bool
    table: int
    fwmark: int
    redundancy: RedundancySpec = RedundancySpec()
    family: Family | None = None  # the one family its packets are (nftables restricts it); None: both
    base: str = ""  # the name the policy file gives it: CLASS for both CLASS and CLASS/v6 ("": same as name)

    @property
    def file_name(self) -> str:
        return self.base or self.name


@dataclass(frozen=True, slots=True)
class TimeServerSpec:
    address: str
    port: int
    uplink: str | None
    operator: str | None


@dataclass(frozen=True, slots=True)
class ClockReactionSpec:
    alarm: bool
    severity: ClockSeverity
    distrust: frozenset[WallTimeFeature]
    avoid_uplinks: bool = False


@dataclass(frozen=True, slots=True)
class ClockSpec:
    servers: tuple[TimeServerSpec, ...]
    chrony: bool
    gpsd: str | None
    max_error: float
    panic: float
    min_agreeing_classes: int
    interval: float
    drift: float  # seconds per second
    hysteresis: int
    on_suspect: ClockReactionSpec
    on_insane: ClockReactionSpec


@dataclass(frozen=True, slots=True)
class MqttSpec:
    enabled: bool
    host: str
    port: int
    topic_prefix: str
    client_id: str | None
    username: str | None
    password_file: str | None
    tls: bool
    ca_file: str | None
    cert_file: str | None
    cert_key_file: str | None
    uplink: str | None
    keys_file: str | None
    max_age: float
    keepalive: int
    unreachable_alarm: float = 30.0


@dataclass(frozen=True, slots=True)
class MetricsSpec:
    """The Prometheus endpoint: where it listens."""

    address: str
    port: int


@dataclass(frozen=True, slots=True)
class ControlSpec:
    socket: str
    socket_mode: int
    socket_group: str | None
    max_override: float
    mqtt: MqttSpec
    metrics: MetricsSpec | None = None  # None: no endpoint


@dataclass(frozen=True, slots=True)
class OwnershipSpec:
    route_protocol: int
    rule_priorities: tuple[int, int]
    tables: tuple[int, int]
    fwmark_mask: int


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A weekly maintenance window on the wall clock (UTC): days 0 (Monday) to 6, minutes after midnight.
    A window whose end is not after its start runs past midnight into the next day."""

    days: frozenset[int]
    start: int
    end: int
    text: str

    @property
    def length(self) -> float:
        """Seconds the window stays open."""
        return float(((self.end - self.start) % 1440 or 1440) * 60)


CanaryKind = Literal["icmp", "udp-echo", "tcp"]


@dataclass(frozen=True, slots=True)
class CanarySpec:
    """A drill's end-to-end test flow: probes marked into a drill-only class (its own fwmark and table,
    no user class) that cross the drilled backup to a service production uses, NAT and all."""

    probe: ProbeSpec  # kind icmp, udp-echo or tcp; target, port, interval, timeout
    rounds: int  # canary probes the drill waits for
    max_loss_percent: float
    table: int  # routed via the drilled uplink while the drill is CHECKING, unreachable otherwise
    fwmark: int  # the canary probes' SO_MARK; its rule sends them to `table`
    key: str = field(init=False, compare=False)  # what its probe results name (never an uplink probe's key)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"canary:{self.probe.key}")


@dataclass(frozen=True, slots=True)
class DrillSpec:
    """A backup uplink proved on a schedule: brought up (if cold), probed through, and let go again."""

    uplink: str
    every: float | None  # an interval on the monotonic clock, or ...
    window: WindowSpec | None  # ... a weekly window on the wall clock (postponed while the clock is not trusted)
    offset: float  # within `jitter`: derived from the site's and uplink's names, so a fleet spreads out
    rounds: int  # probe rounds through the uplink that the drill waits for
    max_loss_percent: float
    max_bytes: int | None  # failoverd's own probe traffic during the drill (an estimate)
    max_duration: float
    valid_for: float  # a pass verifies the uplink for this long: its verify.within, the same number
    retry_after: float  # a drill postponed as unsafe is tried again this much later
    severity: AlarmSeverity  # of the alarm when the uplink fails its drill
    canary: CanarySpec | None = None


@dataclass(frozen=True, slots=True)
class NotifierSpec:
    name: str
    kind: Literal["webhook", "exec", "journal"]
    url: str | None
    format: Literal["plain", "alertmanager"]
    ca_file: str | None
    argv: tuple[str, ...]
    socket: str
    timeout: float


@dataclass(frozen=True, slots=True)
class AlarmRouteSpec:
    severity: frozenset[str] | None
    kind: frozenset[str] | None
    subject: frozenset[str] | None
    notify: tuple[str, ...]

    def matches(self, severity: str, kind: str, subject: str) -> bool:
        # A route naming a dual-stack uplink or class ("fiber") takes the alarms of both its twins;
        # naming the IPv6 twin ("fiber/v6") takes only that one's.
        return (
            (self.severity is None or severity in self.severity)
            and (self.kind is None or kind in self.kind)
            and (self.subject is None or subject in self.subject or subject.removesuffix(V6_SUFFIX) in self.subject)
        )


@dataclass(frozen=True, slots=True)
class AlarmsSpec:
    notifiers: Mapping[str, NotifierSpec] = field(default_factory=dict)
    route: tuple[AlarmRouteSpec, ...] = ()
    escalation: tuple[tuple[float, tuple[str, ...]], ...] = ()  # (after, notifiers), by `after`
    repeat: float | None = None

    def notify(self, severity: str, kind: str, subject: str) -> tuple[str, ...]:
        """The notifiers of the first route that matches (none if no route does)."""
        return next((r.notify for r in self.route if r.matches(severity, kind, subject)), ())


@dataclass(frozen=True, slots=True)
class Policy:
    site: str
    ownership: OwnershipSpec
    uplinks: Mapping[str, UplinkSpec] = field(hash=False)  # in the file's order
    classes: Mapping[str, ClassSpec] = field(hash=False)  # in the file's order, which is match order
    clock: ClockSpec = field(hash=False)
    control: ControlSpec = field(hash=False)
    source: str = "<policy>"
    drills: Mapping[str, DrillSpec] = field(default_factory=dict, hash=False)  # by uplink, in the file's order
    alarms: AlarmsSpec = field(default_factory=AlarmsSpec, hash=False)

    def uplink_twins(self, name: str) -> tuple[str, ...]:
        """The engine's uplinks behind a name: an engine name is itself; a dual-stack uplink's file
        name is both its twins, IPv4 first; an unknown name is none."""
        if name in self.uplinks:
            spec = self.uplinks[name]
            if spec.family != 4 or not spec.base:
                return (name,)
        return tuple(n for n, u in self.uplinks.items() if u.file_name == name)

    def class_twins(self, name: str) -> tuple[str, ...]:
        """As uplink_twins, for classes: CLASS names CLASS and CLASS/v6 when it was split by family."""
        if name in self.classes:
            spec = self.classes[name]
            if spec.family != 4 or not spec.base:
                return (name,)
        return tuple(n for n, c in self.classes.items() if c.file_name == name)

    def carries(self, uplink: str, family: int | None) -> bool:
        """The engine uplink carries packets of `family` (None: a family not known, any will do)."""
        fam = self.uplinks[uplink].family
        return family is None or fam is None or fam == family

    def twin(self, name: str, family: int) -> str | None:
        """The uplink behind `name` that carries `family`, or None."""
        return next(
            (n for n in self.uplink_twins(name) if self.uplinks[n].family in (None, family)),
            None,
        )
