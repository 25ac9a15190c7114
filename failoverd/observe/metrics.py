"""Every metric failoverd exports, declared once: a Prometheus collector over a snapshot of the engine's state."""

# Theory of operation
# -------------------
# Nothing here is updated per engine step. A scrape takes a `Snapshot` on the event loop (references to
# the engine's immutable state and policy, copies of the few counters the services keep in place),
# and `render()` turns it into the text format, off the loop. Every value is derived at scrape time,
# so the engine stays pure and pays nothing while nobody scrapes.
#
# Conventions (https://prometheus.io/docs/practices/naming/): the `failoverd_` prefix, base units
# (`_seconds`, `_ratio` for 0..1), `_total` for counters, and an enum as one series per possible
# value with 1 on the current one (`failoverd_uplink_state{state="DOWN"} 1`), so that a rule reads
# `== 1` and a missing series means a missing uplink, not a state. The state words are failoverctl's.
# Ages are measured on the monotonic clock up to the scrape: the wall clock may be the thing that is
# wrong (clock state SUSPECT/INSANE), and an age needs no clock agreement between gateway and Prometheus.

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import get_args

from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from failoverd import __version__
from failoverd.engine.decide import drained, usable
from failoverd.engine.effects import DrillVerdict, Route
from failoverd.engine.events import ClockState
from failoverd.engine.redundancy import last_verified, redundancy
from failoverd.engine.state import Health, Lifecycle, TargetState
from failoverd.observe.snapshot import ProbeCount, Snapshot

# Every word `failoverctl status` can show for an uplink: health in service, else its lifecycle.
UPLINK_STATES: tuple[str, ...] = (
    *(h.value for h in Health),
    *(lc.value for lc in Lifecycle if lc is not Lifecycle.ACTIVE),
)
ROUTES: tuple[str, ...] = get_args(Route)
VERDICTS: tuple[str, ...] = get_args(DrillVerdict)
OVERRIDE_KINDS = ("force", "drain", "profile")


class EngineCollector(Collector):
    """The daemon's own metrics (process metrics come from prometheus_client's collectors)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        s = self.snapshot
        yield from _daemon(s)
        yield from _uplinks(s)
        yield from _probes(s)
        yield from _classes(s)
        yield from _clock(s)
        yield from _drills(s)
        yield from _alarms(s)
        yield from _engine(s)


def render(snapshot: Snapshot) -> bytes:
    """The text exposition of one scrape: the snapshot, then this process's CPU, memory and descriptors."""
    registry = CollectorRegistry(auto_describe=False)  # per scrape: nothing shared between two scrapes
    registry.register(EngineCollector(snapshot))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return generate_latest(registry)


# -- families -----------------------------------------------------------------------------------------
def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _flag(on: bool) -> float:
    return 1.0 if on else 0.0


def _daemon(s: Snapshot) -> Iterator[Metric]:
    info = _gauge(
        "failoverd_info", "The running daemon: its site, version and policy file.", ("site", "version", "policy")
    )
    info.add_metric([s.policy.site, __version__, s.policy.source], 1.0)
    yield info


def _uplinks(s: Snapshot) -> Iterator[Metric]:
    st, policy = s.state, s.policy
    info = _gauge(
        "failoverd_uplink_info",
        "An uplink of the policy: its interface, kind, network operator, the policy file's name for it "
        "(link: fiber for both fiber and fiber/v6) and the family it carries (4, 6, or both).",
        ("uplink", "interface", "kind", "operator", "link", "family"),
    )
    state = _gauge(
        "failoverd_uplink_state",
        "1 for the uplink's current state (health in service, else its standby lifecycle), 0 for the others.",
        ("uplink", "state"),
    )
    age = _gauge("failoverd_uplink_state_age_seconds", "Time since the uplink entered its current state.", ["uplink"])
    use = _gauge(
        "failoverd_uplink_usable", "1 if the uplink could carry traffic now (up or degraded, not damped).", ["uplink"]
    )
    carrier = _gauge("failoverd_uplink_carrier", "1 if the interface has carrier.", ["uplink"])
    damped = _gauge("failoverd_uplink_suppressed", "1 if route-flap damping suppresses the uplink.", ["uplink"])
    drain = _gauge("failoverd_uplink_drained", "1 if an operator drained the uplink.", ["uplink"])
    warm = _gauge(
        "failoverd_uplink_prewarmed", "1 if the cold uplink is pre-warmed for a class down to one uplink.", ["uplink"]
    )
    rtt = _gauge("failoverd_uplink_rtt_seconds", "Mean probe round-trip time over the health window.", ["uplink"])
    jitter = _gauge(
        "failoverd_uplink_jitter_seconds",
        "Mean difference between successive probe round-trip times over the health window.",
        ["uplink"],
    )
    loss = _gauge("failoverd_uplink_loss_ratio", "Share of probes lost over the health window (0 to 1).", ["uplink"])
    verified = _gauge(
        "failoverd_uplink_verified_age_seconds",
        "Time since the uplink was last seen working (0 while it is up); absent if never.",
        ["uplink"],
    )
    stale = _gauge(
        "failoverd_uplink_verify_stale", "1 if the uplink's proof of working is older than verify.within.", ["uplink"]
    )
    for name, spec in policy.uplinks.items():
        u = st.uplinks.get(name)
        if u is None:
            continue  # a reload's new uplink, before the engine's first step under the new policy
        family = str(spec.family) if spec.family is not None else "both"
        info.add_metric([name, spec.interface, spec.kind, spec.operator or "", spec.file_name, family], 1.0)
        for word in UPLINK_STATES:
            state.add_metric([name, word], _flag(u.status == word))
        age.add_metric([name], max(0.0, s.mono - u.since))
        use.add_metric([name], _flag(usable(st, name)))
        carrier.add_metric([name], _flag(u.carrier))
        damped.add_metric([name], _flag(u.suppressed))
        drain.add_metric([name], _flag(drained(st, name) is not None))
        warm.add_metric([name], _flag(name in st.prewarm))
        samples = [x for p in spec.probes for x in u.targets.get(p.key, TargetState()).samples]
        rtts = [x.rtt for x in samples if x.ok and x.rtt is not None]
        if rtts:
            rtt.add_metric([name], sum(rtts) / len(rtts))
        if samples:
            loss.add_metric([name], sum(1 for x in samples if not x.ok) / len(samples))
        # As the health check judges it (engine/health.py): successive answers of one target.
        diffs = [
            abs(b - a)
            for p in spec.probes
            for a, b in itertools.pairwise(
                x.rtt for x in u.targets.get(p.key, TargetState()).samples if x.ok and x.rtt is not None
            )
        ]
        if diffs:
            jitter.add_metric([name], sum(diffs) / len(diffs))
        last = last_verified(u, s.mono)
        if last is not None:
            verified.add_metric([name], max(0.0, s.mono - last))
        stale.add_metric([name], _flag(u.verify_stale))
    yield from (info, state, age, use, carrier, damped, drain, warm, rtt, jitter, loss, verified, stale)


def _probes(s: Snapshot) -> Iterator[Metric]:
    done = CounterMetricFamily(
        "failoverd_probes", "Probes completed (answered or lost) since the daemon started.", labels=["uplink", "probe"]
    )
    lost = CounterMetricFamily(
        "failoverd_probes_lost",
        "Probes lost (timed out or refused) since the daemon started.",
        labels=["uplink", "probe"],
    )
    failed = _gauge(
        "failoverd_probe_target_failed",
        "1 if the probe target is judged failed (it counts towards the quorum).",
        ("uplink", "probe"),
    )
    for name, spec in s.policy.uplinks.items():
        u = s.state.uplinks.get(name)
        for p in spec.probes:
            c = s.probes.get((name, p.key), ProbeCount(0, 0))
            done.add_metric([name, p.key], c.done)
            lost.add_metric([name, p.key], c.lost)
            if u is not None:
                failed.add_metric([name, p.key], _flag(u.targets.get(p.key, TargetState()).failed))
    yield from (done, lost, failed)


def _classes(s: Snapshot) -> Iterator[Metric]:
    st, policy = s.state, s.policy
    on = _gauge(
        "failoverd_class_uplink",
        "1 for the uplink of its path the class is routed over now, 0 for the others of its path.",
        ("class", "uplink"),
    )
    route = _gauge(
        "failoverd_class_route",
        "1 for the kind of route the class has now (via an uplink, blackhole, unreachable, pending), 0 for the others.",
        ("class", "route"),
    )
    index = _gauge(
        "failoverd_class_path_index",
        "Position in the class's path of the uplink it uses (0: its first choice); absent while it uses none.",
        ["class"],
    )
    age = _gauge("failoverd_class_assignment_age_seconds", "Time since the class's route last changed.", ["class"])
    forced = _gauge("failoverd_class_overridden", "1 if an operator's override put the class where it is.", ["class"])
    switches = CounterMetricFamily(
        "failoverd_class_switches",
        "Decisions that moved the class since the daemon started (its first placement not counted).",
        labels=["class"],
    )
    n_usable = _gauge(
        "failoverd_class_usable_uplinks", "Uplinks of the class's path that could carry it now.", ["class"]
    )
    n_standby = _gauge(
        "failoverd_class_standby_uplinks",
        "Cold uplinks of the class's path that are known good (verified recently).",
        ["class"],
    )
    n_unproven = _gauge(
        "failoverd_class_unproven_uplinks",
        "Cold uplinks of the class's path that failed, are down or are not verified.",
        ["class"],
    )
    exposed = _gauge(
        "failoverd_class_exposed", "1 while the class's down-to-its-last-uplink alarm is raised.", ["class"]
    )
    for name, spec in policy.classes.items():
        c = st.classes.get(name)
        if c is None:
            continue
        for uplink in spec.path:
            on.add_metric([name, uplink], _flag(c.route == "via" and c.uplink == uplink))
        for r in ROUTES:
            route.add_metric([name, r], _flag(c.route == r))
        if c.route == "via" and c.uplink in spec.path:
            index.add_metric([name], float(spec.path.index(c.uplink)))
        age.add_metric([name], max(0.0, s.mono - c.since))
        forced.add_metric([name], _flag(c.by_override is not None))
        switches.add_metric([name], s.switches.get(name, 0))
        red = redundancy(spec, policy, st)
        n_usable.add_metric([name], len(red.usable))
        n_standby.add_metric([name], len(red.standby))
        n_unproven.add_metric([name], len(red.unproven))
        exposed.add_metric([name], _flag(c.exposed))
    overrides = _gauge(
        "failoverd_overrides_active", "Operator overrides in force, by kind (force a class, drain an uplink).", ["kind"]
    )
    for kind in OVERRIDE_KINDS:
        overrides.add_metric([kind], sum(1 for o in st.overrides if o.kind == kind))
    yield from (on, route, index, age, forced, switches, n_usable, n_standby, n_unproven, exposed, overrides)


def _clock(s: Snapshot) -> Iterator[Metric]:
    ck = s.state.clock
    state = _gauge(
        "failoverd_clock_state",
        "1 for the clock checker's current verdict on the wall clock, 0 for the others.",
        ["state"],
    )
    for v in ClockState:
        state.add_metric([v.value], _flag(ck.state is v))
    yield state
    age = _gauge("failoverd_clock_state_age_seconds", "Time since the clock verdict last changed.")
    age.add_metric([], max(0.0, s.mono - ck.since))
    yield age
    if ck.bound is not None:
        bound = _gauge(
            "failoverd_clock_offset_bound_seconds", "Bound on the wall clock's error, as the checker proved it."
        )
        bound.add_metric([], ck.bound)
        yield bound


def _alarms(s: Snapshot) -> Iterator[Metric]:
    active = _gauge(
        "failoverd_alarm_active",
        "1 for each alarm raised now (engine/alarms.py), by its id, kind, subject and severity.",
        ["id", "kind", "subject", "severity"],
    )
    acked = _gauge("failoverd_alarm_acknowledged", "1 when an operator acknowledged the active alarm.", ["id"])
    age = _gauge("failoverd_alarm_age_seconds", "Time since the active alarm was raised.", ["id"])
    count = _gauge("failoverd_alarms", "Active alarms by severity.", ["severity"])
    by_severity = dict.fromkeys(("critical", "warning", "info"), 0)
    for a in s.state.alarms.values():
        active.add_metric([a.id, a.kind, a.subject, a.severity], 1.0)
        acked.add_metric([a.id], _flag(a.acked_by is not None))
        age.add_metric([a.id], max(0.0, s.mono - a.raised))
        by_severity[a.severity] = by_severity.get(a.severity, 0) + 1
    for severity, n in by_severity.items():
        count.add_metric([severity], float(n))
    yield from (active, acked, age, count)


def _drills(s: Snapshot) -> Iterator[Metric]:
    st = s.state
    verdict = _gauge(
        "failoverd_drill_last_verdict",
        "1 for the verdict of the uplink's last backup drill, 0 for the others.",
        ("uplink", "verdict"),
    )
    last_age = _gauge(
        "failoverd_drill_last_age_seconds", "Time since the uplink's last drill ended; absent if never.", ["uplink"]
    )
    pass_age = _gauge(
        "failoverd_drill_last_pass_age_seconds",
        "Time since the uplink last passed a drill; absent if never.",
        ["uplink"],
    )
    valid = _gauge(
        "failoverd_drill_verified", "1 if the uplink's last pass is within the drill's valid_for.", ["uplink"]
    )
    running = _gauge("failoverd_drill_running", "1 while a drill of the uplink runs.", ["uplink"])
    for name, spec in s.policy.drills.items():
        sch = st.drills.get(name)
        last = sch.last if sch is not None else None
        for v in VERDICTS:
            verdict.add_metric([name, v], _flag(last is not None and last.verdict == v))
        if last is not None:
            last_age.add_metric([name], max(0.0, s.mono - last.at))
        passed = sch.verified_at if sch is not None else None
        if passed is not None:
            pass_age.add_metric([name], max(0.0, s.mono - passed))
        valid.add_metric([name], _flag(passed is not None and s.mono - passed <= spec.valid_for))
        running.add_metric([name], _flag(st.drill is not None and st.drill.uplink == name))
    yield from (verdict, last_age, pass_age, valid, running)


def _engine(s: Snapshot) -> Iterator[Metric]:
    e = s.engine
    steps = CounterMetricFamily(
        "failoverd_engine_steps", "Events the engine has stepped through since the daemon started."
    )
    steps.add_metric([], e.steps)
    queued = _gauge("failoverd_engine_queue_length", "Events waiting for the engine.")
    queued.add_metric([], e.queued)
    idle = _gauge("failoverd_engine_last_step_age_seconds", "Time since the engine last stepped or audited the kernel.")
    idle.add_metric([], max(0.0, s.mono - e.last_step))
    step_time = HistogramMetricFamily("failoverd_engine_step_seconds", "Time the pure engine took for one step.")
    step_time.add_metric([], list(e.step_time.buckets), e.step_time.total)
    effect = HistogramMetricFamily(
        "failoverd_effect_latency_seconds",
        "From the engine taking an event to the kernel holding the routes it decided (steps that moved a class).",
    )
    effect.add_metric([], list(e.effect_latency.buckets), e.effect_latency.total)
    yield from (steps, queued, idle, step_time, effect)
