"""The Prometheus collector on engine states made by the real engine, and the endpoint over a real socket."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.drillstate import DrillResult, DrillSchedule
from failoverd.engine.records import effect_record
from failoverd.engine.state import EngineState, Override, initial_state
from failoverd.engine.step import step
from failoverd.errors import PolicyError
from failoverd.observe.latency import Latency
from failoverd.observe.metrics import render
from failoverd.observe.snapshot import CONTENT_TYPE, EngineCounters, ProbeCount, Snapshot
from failoverd.policy import parse_policy_text
from failoverd.policy.model import MetricsSpec
from failoverd.services.base import Applied, Failed
from failoverd.services.metrics import MetricsService, SwitchCount, listen_text

POLICY = parse_policy_text(
    """
site: metrics-test
uplinks:
  - name: fiber
    interface: fiber0
    next_hop: 192.0.2.1
    operator: op-a
    probes: [{kind: icmp, target: 198.51.100.1, interval: 1s}, {kind: icmp, target: 198.51.100.2, interval: 1s}]
    health: {up: {successes: 1, hold_down: 0}}
  - {name: mobile, interface: wwan0, next_hop: 192.0.2.5, kind: cellular, health: {up: {successes: 1, hold_down: 0}}}
  - name: sat
    interface: sat0
    next_hop: 192.0.2.9
    kind: satellite
    standby: {mode: cold, activate: {run: [/bin/true]}, activation_time: 30s, release_after: 50s}
    probes: [{kind: icmp, target: 198.51.100.1, interval: 1s}]
classes:
  - {name: critical, match: [{dscp: [EF]}], path: [fiber, mobile, sat], preempt_delay: 5s}
  - {name: bulk, path: [fiber, mobile]}
drills:
  - {uplink: sat, every: 7d}
control:
  metrics: {listen: "127.0.0.1:9469"}
""",
    "metrics.yaml",
)
P1, P2 = (p.key for p in POLICY.uplinks["fiber"].probes)


def run(events: list[tuple[float, ev.Event]]) -> tuple[EngineState, list[fx.Effect]]:
    state, out = step(initial_state(POLICY, 0.0), ev.Tick(), POLICY, 0.0)
    effects = list(out)
    for t, event in events:
        state, out = step(state, event, POLICY, t)
        effects += out
    return state, effects


def answers(t: float, rtts: list[float], probe: str) -> list[tuple[float, ev.Event]]:
    return [(t + i * 0.1, ev.ProbeResult("fiber", probe, True, r)) for i, r in enumerate(rtts)]


def scrape(snapshot: Snapshot) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = render(snapshot).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def cut_fiber() -> tuple[EngineState, list[fx.Effect]]:
    """fiber answers (RTTs 10, 14, 12 ms and 20, 20 ms, one loss), then loses carrier at 10 s."""
    return run(
        [
            *answers(1.0, [0.010, 0.014, 0.012], P1),
            *answers(1.5, [0.020, 0.020], P2),
            (2.0, ev.ProbeResult("fiber", P2, False, None)),
            (3.0, ev.ClockChanged(ev.ClockState.SANE, 0.05)),
            (10.0, ev.CarrierChanged("fiber", False)),
        ]
    )


def test_uplink_state_path_and_window_statistics() -> None:
    state, _ = cut_fiber()
    s = scrape(Snapshot(POLICY, state, mono=12.0))
    assert value(s, "failoverd_uplink_state", uplink="fiber", state="DOWN") == 1
    assert value(s, "failoverd_uplink_state", uplink="fiber", state="UP") == 0
    assert value(s, "failoverd_uplink_state", uplink="mobile", state="UP") == 1
    assert value(s, "failoverd_uplink_state", uplink="sat", state="STANDBY") == 1
    assert sum(v for (n, lab), v in s.items() if n == "failoverd_uplink_state" and ("uplink", "sat") in lab) == 1
    assert value(s, "failoverd_uplink_state_age_seconds", uplink="fiber") == pytest.approx(2.0)
    assert value(s, "failoverd_uplink_carrier", uplink="fiber") == 0
    assert value(s, "failoverd_uplink_usable", uplink="fiber") == 0
    assert value(s, "failoverd_uplink_usable", uplink="mobile") == 1
    # The window as the engine holds it: five answers and one loss over two targets.
    assert value(s, "failoverd_uplink_rtt_seconds", uplink="fiber") == pytest.approx(0.076 / 5)
    assert value(s, "failoverd_uplink_loss_ratio", uplink="fiber") == pytest.approx(1 / 6)
    # Jitter between successive answers of one target: |14-10|, |12-14| and |20-20| ms.
    assert value(s, "failoverd_uplink_jitter_seconds", uplink="fiber") == pytest.approx(0.006 / 3)
    assert value(s, "failoverd_uplink_rtt_seconds", uplink="mobile") is None  # no probes, no RTT: absent
    assert value(s, "failoverd_uplink_verified_age_seconds", uplink="fiber") == pytest.approx(2.0)  # left UP at 10 s
    assert value(s, "failoverd_uplink_verified_age_seconds", uplink="mobile") == 0  # UP now
    assert value(s, "failoverd_uplink_verified_age_seconds", uplink="sat") is None  # never seen working
    info = {
        "uplink": "mobile",
        "interface": "wwan0",
        "kind": "cellular",
        "operator": "",
        "link": "mobile",
        "family": "4",
    }
    assert value(s, "failoverd_uplink_info", **info) == 1
    # Classes: on the second uplink of their path, via a route, with one usable uplink left.
    assert value(s, "failoverd_class_uplink", **{"class": "critical", "uplink": "mobile"}) == 1
    assert value(s, "failoverd_class_uplink", **{"class": "critical", "uplink": "fiber"}) == 0
    assert value(s, "failoverd_class_uplink", **{"class": "critical", "uplink": "sat"}) == 0
    assert value(s, "failoverd_class_route", **{"class": "bulk", "route": "via"}) == 1
    assert value(s, "failoverd_class_route", **{"class": "bulk", "route": "blackhole"}) == 0
    assert value(s, "failoverd_class_path_index", **{"class": "critical"}) == 1
    assert value(s, "failoverd_class_usable_uplinks", **{"class": "critical"}) == 1
    assert value(s, "failoverd_class_unproven_uplinks", **{"class": "critical"}) == 1  # sat, never verified
    assert value(s, "failoverd_class_standby_uplinks", **{"class": "critical"}) == 0
    assert value(s, "failoverd_class_assignment_age_seconds", **{"class": "bulk"}) == pytest.approx(2.0)
    # Clock verdict and bound.
    assert value(s, "failoverd_clock_state", state="sane") == 1
    assert value(s, "failoverd_clock_state", state="unknown") == 0
    assert value(s, "failoverd_clock_offset_bound_seconds") == pytest.approx(0.05)
    assert value(s, "failoverd_info", site="metrics-test", version="0.1.0", policy="metrics.yaml") == 1


def test_before_any_evidence_nothing_is_usable_and_no_class_has_an_uplink() -> None:
    state = initial_state(POLICY, 0.0)
    s = scrape(Snapshot(POLICY, state, mono=1.0))
    assert value(s, "failoverd_uplink_state", uplink="fiber", state="UNKNOWN") == 1
    assert value(s, "failoverd_class_route", **{"class": "critical", "route": "pending"}) == 1
    assert value(s, "failoverd_class_path_index", **{"class": "critical"}) is None
    assert value(s, "failoverd_clock_offset_bound_seconds") is None
    assert value(s, "failoverd_uplink_loss_ratio", uplink="fiber") is None


def test_switches_are_counted_from_the_history_without_the_first_placement() -> None:
    state, effects = cut_fiber()
    counter = SwitchCount(initial_state(POLICY, 0.0))
    for e in effects:
        record = effect_record(e)
        if record is not None:
            counter.put(record)
    assert counter.counts == {"critical": 1, "bulk": 1}  # fiber -> mobile; the start's placement is not a switch
    # Fiber back: after the preempt delay both return.
    state, more = step(state, ev.CarrierChanged("fiber", True), POLICY, 20.0)
    for t in (20.5, 21.0, 30.0, 100.0):
        state, out = step(state, ev.ProbeResult("fiber", P1, True, 0.01), POLICY, t)
        more += out
        state, out = step(state, ev.ProbeResult("fiber", P2, True, 0.01), POLICY, t)
        more += out
    for e in more:
        record = effect_record(e)
        if record is not None:
            counter.put(record)
    assert state.classes["critical"].uplink == state.classes["bulk"].uplink == "fiber"
    assert counter.counts == {"critical": 2, "bulk": 2}
    s = scrape(Snapshot(POLICY, state, mono=31.0, switches=counter.counts))
    assert value(s, "failoverd_class_switches_total", **{"class": "critical"}) == 2


def test_probe_counters_overrides_drills_and_engine_histograms() -> None:
    state, _ = cut_fiber()
    drain = Override("o1", "drain", None, "mobile", "splice", "noc", created=11.0, expires=3600.0)
    force = Override("o2", "force", "bulk", "mobile", "test", "noc", created=11.0, expires=3600.0)
    cause = fx.Cause("drill-pass", "passed")
    state = replace(
        state,
        overrides=(drain, force),
        drills={"sat": DrillSchedule(last=DrillResult("fail", 8.0, cause), verified_at=2.0)},
    )
    steps, effect = Latency(), Latency()
    for x in (0.00005, 0.0003, 0.002):
        steps.observe(x)
    effect.observe(0.004)
    counters = EngineCounters(steps=17, queued=2, last_step=11.5, step_time=steps.view(), effect_latency=effect.view())
    probes = {("fiber", P1): ProbeCount(40, 3), ("fiber", P2): ProbeCount(39, 39)}
    s = scrape(Snapshot(POLICY, state, mono=12.0, probes=probes, engine=counters))
    assert value(s, "failoverd_probes_total", uplink="fiber", probe=P1) == 40
    assert value(s, "failoverd_probes_lost_total", uplink="fiber", probe=P2) == 39
    assert value(s, "failoverd_probes_total", uplink="sat", probe="icmp:198.51.100.1") == 0
    assert value(s, "failoverd_overrides_active", kind="drain") == 1
    assert value(s, "failoverd_overrides_active", kind="force") == 1
    assert value(s, "failoverd_uplink_drained", uplink="mobile") == 1
    assert value(s, "failoverd_drill_last_verdict", uplink="sat", verdict="fail") == 1
    assert value(s, "failoverd_drill_last_verdict", uplink="sat", verdict="pass") == 0
    assert value(s, "failoverd_drill_last_age_seconds", uplink="sat") == pytest.approx(4.0)
    assert value(s, "failoverd_drill_last_pass_age_seconds", uplink="sat") == pytest.approx(10.0)
    assert value(s, "failoverd_drill_verified", uplink="sat") == 1  # valid for 1.5 intervals
    assert value(s, "failoverd_drill_running", uplink="sat") == 0
    assert value(s, "failoverd_engine_steps_total") == 17
    assert value(s, "failoverd_engine_queue_length") == 2
    assert value(s, "failoverd_engine_last_step_age_seconds") == pytest.approx(0.5)
    assert value(s, "failoverd_engine_step_seconds_count") == 3
    assert value(s, "failoverd_engine_step_seconds_bucket", le="0.0001") == 1
    assert value(s, "failoverd_engine_step_seconds_bucket", le="0.0005") == 2
    assert value(s, "failoverd_engine_step_seconds_bucket", le="+Inf") == 3
    assert value(s, "failoverd_effect_latency_seconds_sum") == pytest.approx(0.004)
    # Process metrics come along.
    assert (value(s, "process_resident_memory_bytes") or 0) > 0


def test_a_reloads_new_uplink_without_state_yet_is_left_out_not_an_error() -> None:
    state, _ = cut_fiber()
    state = replace(state, uplinks={n: u for n, u in state.uplinks.items() if n != "sat"})
    s = scrape(Snapshot(POLICY, state, mono=12.0))
    assert value(s, "failoverd_uplink_state", uplink="sat", state="STANDBY") is None
    assert value(s, "failoverd_uplink_state", uplink="fiber", state="DOWN") == 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) is installed by bootstrap")
def test_active_alarms_by_id_and_severity_and_whether_acknowledged() -> None:
    state, _ = cut_fiber()
    state, _ = step(state, ev.AckAlarm("r", "uplink-down:fiber", "splice crew called", "op"), POLICY, 11.0)
    s = scrape(Snapshot(POLICY, state, mono=12.0))
    labels = {"id": "uplink-down:fiber", "kind": "uplink-down", "subject": "fiber", "severity": "warning"}
    assert value(s, "failoverd_alarm_active", **labels) == 1.0
    assert value(s, "failoverd_alarm_acknowledged", id="uplink-down:fiber") == 1.0
    assert value(s, "failoverd_alarm_age_seconds", id="uplink-down:fiber") == pytest.approx(2.0)
    assert value(s, "failoverd_alarms", severity="warning") == float(
        sum(1 for a in state.alarms.values() if a.severity == "warning")
    )
    assert value(s, "failoverd_alarms", severity="critical") is not None  # every severity, zero or not


def test_promtool_finds_nothing_to_lint() -> None:
    state, _ = cut_fiber()
    cause = fx.Cause("drill-pass", "passed")
    state = replace(state, drills={"sat": DrillSchedule(last=DrillResult("pass", 8.0, cause), verified_at=8.0)})
    text = render(Snapshot(POLICY, state, mono=12.0, probes={("fiber", P1): ProbeCount(4, 1)}))
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, check=False)
    assert r.returncode == 0 and not r.stdout and not r.stderr, (r.stdout, r.stderr)


# -- the endpoint ------------------------------------------------------------------------------------
class StandIn:
    """The parts of the engine and probe services the metrics service reads."""

    def __init__(self, state: EngineState) -> None:
        self.policy = POLICY
        self.state = state
        self.steps = 5
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.last_step = 0.0
        self.step_time = Latency()
        self.effect_latency = Latency()
        self.stats: dict[Any, Any] = {}


class History:
    def __init__(self) -> None:
        self.feeds: list[Any] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def get(port: int, request: bytes = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), body


def with_metrics(listen: MetricsSpec | None) -> Any:
    return replace(POLICY, control=replace(POLICY.control, metrics=listen))


async def test_endpoint_serves_turns_off_moves_and_keeps_the_old_address_when_the_new_is_taken() -> None:
    state, _ = cut_fiber()
    engine = StandIn(state)
    port, other = free_port(), free_port()
    engine.policy = with_metrics(MetricsSpec("127.0.0.1", port))
    svc = MetricsService(engine, engine, History())  # type: ignore[arg-type]
    task = asyncio.create_task(svc.run())
    try:
        for _ in range(50):
            if svc.server is not None:
                break
            await asyncio.sleep(0.02)
        status, body = await get(port)
        assert status == "HTTP/1.1 200 OK"
        assert b'failoverd_uplink_state{state="DOWN",uplink="fiber"} 1.0' in body
        assert (await get(port, b"GET / HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.1 404 Not Found"
        assert (await get(port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.1 405 Method Not Allowed"
        assert (await get(port, b"nonsense\r\n\r\n"))[0] == "HTTP/1.1 400 Bad Request"
        # A metric that fails to render costs its scrape, not the service.
        engine.state = None  # type: ignore[assignment]
        assert (await get(port))[0] == "HTTP/1.1 500 Internal Server Error"
        engine.state = state
        # A client that never finishes its request does not hold up a scrape.
        _, idle = await asyncio.open_connection("127.0.0.1", port)
        assert (await get(port))[0] == "HTTP/1.1 200 OK"
        idle.close()
        # Moved by a reload.
        result = await svc.reconfigure(with_metrics(MetricsSpec("127.0.0.1", other)))
        assert result == Applied(f"listening on 127.0.0.1:{other}")
        assert (await get(other))[0] == "HTTP/1.1 200 OK"
        with pytest.raises(ConnectionRefusedError):
            await get(port)
        # A new address that is taken: refused, honestly, and the endpoint stays where it was.
        with socket.socket() as taken:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the port's old connections wait
            taken.bind(("127.0.0.1", port))
            taken.listen()
            result = await svc.reconfigure(with_metrics(MetricsSpec("127.0.0.1", port)))
            assert isinstance(result, Failed) and f"still on 127.0.0.1:{other}" in result.why
        assert (await get(other))[0] == "HTTP/1.1 200 OK"
        assert svc.status()["listen"] == f"127.0.0.1:{other}"
        # Off.
        assert await svc.reconfigure(with_metrics(None)) == Applied("endpoint off")
        with pytest.raises(ConnectionRefusedError):
            await get(other)
        assert svc.status() == {"listen": None, "serving": False, "scrapes": 4, "error": None}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_an_address_taken_at_start_is_retried_until_it_is_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("failoverd.services.metrics.RETRY", 0.05)
    state, _ = cut_fiber()
    engine = StandIn(state)
    port = free_port()
    engine.policy = with_metrics(MetricsSpec("127.0.0.1", port))
    svc = MetricsService(engine, engine, History())  # type: ignore[arg-type]
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(("127.0.0.1", port))
    taken.listen()
    task = asyncio.create_task(svc.run())
    try:
        await asyncio.sleep(0.2)
        st = svc.status()
        assert not st["serving"] and "address already in use" in st["error"], st
        # A reload of the same policy, still taken: refused, and said so.
        result = await svc.reconfigure(engine.policy)
        assert isinstance(result, Failed) and result.why.endswith("retried every 0.05s"), result
        taken.close()
        for _ in range(50):
            if svc.server is not None:
                break
            await asyncio.sleep(0.02)
        assert (await get(port))[0] == "HTTP/1.1 200 OK"
        assert svc.status()["error"] is None
        assert await svc.reconfigure(engine.policy) == Applied(f"listening on 127.0.0.1:{port}")
    finally:
        taken.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


SMALL = "site: s\nuplinks: [{name: a, interface: a0, next_hop: 192.0.2.1}]\nclasses: [{name: c, path: [a]}]\n"


@pytest.mark.parametrize(
    ("listen", "spec"),
    [
        ("127.0.0.1:9469", MetricsSpec("127.0.0.1", 9469)),
        ("[::1]:9469", MetricsSpec("::1", 9469)),
        ("[::]:80", MetricsSpec("::", 80)),
    ],
)
def test_listen_addresses_compile_and_print_as_written(listen: str, spec: MetricsSpec) -> None:
    text = f'{SMALL}control: {{metrics: {{listen: "{listen}"}}}}\n'
    policy = parse_policy_text(text, "p.yaml")
    assert policy.control.metrics == spec
    assert listen_text(spec) == listen
    assert parse_policy_text(text.replace("control: ", "#"), "p.yaml").control.metrics is None  # off by default


@pytest.mark.parametrize(
    ("listen", "why"),
    [
        ("127.0.0.1", "is not ADDRESS:PORT"),
        ("::1:9469", "is not ADDRESS:PORT"),
        ("[127.0.0.1]:9469", "write an IPv6 address in brackets"),
        ("127.0.0.1:0", "port 0 is not between 1 and 65535"),
        ("gw.lan:9469", "'gw.lan' is not an IPv4 or IPv6 address (names are not resolved)"),
    ],
)
def test_a_bad_listen_address_is_refused_at_its_place(listen: str, why: str) -> None:
    text = f'{SMALL}control:\n  metrics: {{listen: "{listen}"}}\n'
    with pytest.raises(PolicyError) as info:
        parse_policy_text(text, "p.yaml")
    [problem] = [str(p) for p in info.value.problems]
    assert problem.startswith("p.yaml:5:21: control.metrics.listen: ") and why in problem, problem


@pytest.mark.parametrize(
    ("listen", "warned"), [("0.0.0.0:9469", True), ("[::]:9469", True), ("198.18.10.1:9469", False)]
)
def test_check_warns_of_an_endpoint_on_every_interface(tmp_path: Path, listen: str, warned: bool) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f'{SMALL}control: {{metrics: {{listen: "{listen}"}}}}\n')
    r = subprocess.run(
        [sys.executable, "-m", "failoverd.cli", "check", "--quiet", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert ("answers on every interface, the uplinks' too" in r.stderr) is warned, r.stderr


def test_the_daemon_imports_prometheus_client_only_when_it_serves_metrics() -> None:
    code = "import sys, failoverd.runtime, failoverd.cli; print('prometheus_client' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_the_content_type_is_the_one_the_text_is_rendered_in() -> None:
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

    assert CONTENT_TYPE == CONTENT_TYPE_PLAIN_0_0_4
