"""IPv6 on equal terms: a dual-stack uplink or class is compiled into one per family (policy/compile.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failoverd.cli import summary
from failoverd.control.commands import dispatch
from failoverd.control.engineonly import EngineGateway
from failoverd.ctl import render_status
from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.state import EngineState, initial_state
from failoverd.engine.step import step
from failoverd.errors import PolicyError
from failoverd.kernel import nft, plan
from failoverd.kernel.plan import Route
from failoverd.observe.status import class_rows, uplink_rows
from failoverd.policy import load_policy, parse_policy_text
from failoverd.policy.model import AlarmRouteSpec, Policy
from failoverd.simulate import Simulation, Timeline

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "policies" / "dual-stack.yaml"

POLICY = """
site: s
uplinks:
  - name: fiber
    interface: eth1
    next_hop: 192.0.2.1
    next_hop6: fe80::1
    probes:
      - {kind: icmp, target: 198.51.100.1}
      - {kind: arp-nexthop}
      - {kind: icmp, target: "2001:db8:ffff::1"}
      - {kind: ndp-nexthop}
      - {kind: http, url: "http://probe.example/"}
  - name: lte
    interface: wwan0
    point_to_point: true
    kind: cellular
    probes:
      - {kind: icmp, target: 198.51.100.1}
      - {kind: icmp, target: "2001:db8:ffff::1"}
  - name: sat
    interface: sat0
    next_hop: 203.0.113.1
    admit: [voice]
    probes: [{kind: icmp, target: 198.51.100.1}]
  - name: six
    interface: eth6
    next_hop: "2001:db8:6::1"
    probes: [{kind: icmp, target: "2001:db8:ffff::1"}]
classes:
  - name: voice
    match: [{dscp: [EF]}]
    path: [fiber, lte, sat]
  - name: office
    match: [{src: [10.1.0.0/24]}, {src: ["2001:db8:10::/64"]}]
    path: [fiber, six]
  - name: cameras
    match: [{src: [10.1.9.0/24]}]
    path: [fiber, lte]
  - name: bulk
    path: [fiber, lte]
clock:
  servers:
    - {address: 192.0.2.123, uplink: fiber}
    - {address: "2001:db8::123", uplink: fiber}
drills:
  - {uplink: lte/v6, every: 1d}
"""


def test_a_dual_stack_uplink_is_one_uplink_per_family() -> None:
    p = parse_policy_text(POLICY, "t.yaml")
    assert list(p.uplinks) == ["fiber", "fiber/v6", "lte", "lte/v6", "sat", "six"]
    v4, v6 = p.uplinks["fiber"], p.uplinks["fiber/v6"]
    assert (v4.family, v6.family) == (4, 6)
    assert (v4.interface, v6.interface) == ("eth1", "eth1")
    assert (v4.next_hop, v6.next_hop) == ("192.0.2.1", "fe80::1")
    assert [q.key for q in v4.probes] == [
        "icmp:198.51.100.1",
        "arp-nexthop:192.0.2.1",
        "http:http://probe.example/",  # a name: IPv4's, and resolved in IPv4 only
    ]
    assert [q.key for q in v6.probes] == ["icmp:2001:db8:ffff::1", "ndp-nexthop:fe80::1"]
    assert (v4.health.quorum, v6.health.quorum) == (2, 2)  # a majority of each family's own probes
    assert v4.table != v6.table and v4.fwmark != v6.fwmark
    assert (v4.file_name, v6.file_name) == ("fiber", "fiber")
    # Point-to-point with probes of both families: two as well, each routed by the device only.
    assert (p.uplinks["lte"].family, p.uplinks["lte/v6"].family) == (4, 6)
    assert p.uplinks["lte/v6"].next_hop is None
    # One family: one uplink, of its next hop's family, under its own name.
    assert (p.uplinks["sat"].family, p.uplinks["six"].family) == (4, 6)
    assert p.uplinks["sat"].file_name == "sat"
    assert p.uplink_twins("fiber") == ("fiber", "fiber/v6")
    assert p.uplink_twins("fiber/v6") == ("fiber/v6",)
    assert p.uplink_twins("sat") == ("sat",)
    assert p.twin("fiber", 6) == "fiber/v6" and p.twin("sat", 6) is None


def test_a_dual_stack_class_is_placed_per_family() -> None:
    p = parse_policy_text(POLICY, "t.yaml")
    assert list(p.classes) == ["voice", "voice/v6", "office", "office/v6", "cameras", "bulk", "bulk/v6"]
    assert p.classes["voice"].path == ("fiber", "lte", "sat")
    assert p.classes["voice/v6"].path == ("fiber/v6", "lte/v6")  # sat carries no IPv6
    assert (p.classes["voice"].family, p.classes["voice/v6"].family) == (4, 6)
    # Mixed selectors split by family; the IPv6-only uplink serves the IPv6 side only.
    assert [m.src for m in p.classes["office"].matches] == [("10.1.0.0/24",)]
    assert [m.src for m in p.classes["office/v6"].matches] == [("2001:db8:10::/64",)]
    assert p.classes["office"].path == ("fiber",)
    assert p.classes["office/v6"].path == ("fiber/v6", "six")
    # IPv4 selectors only: one class of IPv4, under its own name.
    assert p.classes["cameras"].family == 4 and p.classes["cameras"].path == ("fiber", "lte")
    assert p.classes["bulk/v6"].matches == ()  # the catch-all of IPv6
    assert p.class_twins("bulk") == ("bulk", "bulk/v6")
    # admit follows the family: sat admits voice, not voice/v6.
    assert p.uplinks["sat"].admit == frozenset({"voice"})
    tables = [u.table for u in p.uplinks.values()] + [c.table for c in p.classes.values()]
    marks = [u.fwmark for u in p.uplinks.values()] + [c.fwmark for c in p.classes.values()]
    assert len(set(tables)) == len(tables) and len(set(marks)) == len(marks)


def test_time_servers_and_drills_name_the_twin_of_their_family() -> None:
    p = parse_policy_text(POLICY, "t.yaml")
    assert [t.uplink for t in p.clock.servers] == ["fiber", "fiber/v6"]
    assert list(p.drills) == ["lte/v6"]
    assert p.uplinks["lte/v6"].verify is not None  # the drill's proof verifies the twin it drills
    assert p.uplinks["lte"].verify is None


def test_making_an_uplink_dual_stack_moves_no_table_or_mark_the_file_names() -> None:
    single = (
        POLICY.replace("    next_hop6: fe80::1\n", "")
        .replace('"2001:db8::123", uplink: fiber', '"2001:db8::123", uplink: lte')
        .replace('      - {kind: icmp, target: "2001:db8:ffff::1"}\n      - {kind: ndp-nexthop}\n', "", 1)
    )
    a, b = parse_policy_text(single, "a.yaml"), parse_policy_text(POLICY, "b.yaml")
    assert "fiber/v6" not in a.uplinks and "fiber/v6" in b.uplinks
    for name in ("fiber", "lte", "sat", "six"):
        assert (a.uplinks[name].table, a.uplinks[name].fwmark) == (b.uplinks[name].table, b.uplinks[name].fwmark)
    for name in ("voice", "office", "cameras", "bulk"):
        assert (a.classes[name].table, a.classes[name].fwmark) == (b.classes[name].table, b.classes[name].fwmark)


def test_single_stack_policies_compile_as_before() -> None:
    p = load_policy(ROOT / "policies" / "branch.yaml")
    assert list(p.uplinks) == ["fiber", "lte"] and list(p.classes) == ["all"]
    assert p.uplinks["lte"].family is None  # point-to-point, IPv4 probes only: both families, one judgement
    assert p.classes["all"].family == 4  # its path's IPv4 next hop decides: IPv6 is not marked for it


def test_nftables_marks_each_twin_in_its_family_only() -> None:
    p = parse_policy_text(POLICY, "t.yaml")
    text = nft.render(p)
    lines = [ln.strip() for ln in text.splitlines() if "comment" in ln]
    voice = [ln for ln in lines if ln.endswith('"class voice"')]
    voice6 = [ln for ln in lines if ln.endswith('"class voice/v6"')]
    assert all(ln.startswith("ip dscp { 46 }") for ln in voice), voice
    assert all(ln.startswith("ip6 dscp { 46 }") for ln in voice6), voice6
    bulk = [ln for ln in lines if ln.endswith('"class bulk"')]
    bulk6 = [ln for ln in lines if ln.endswith('"class bulk/v6"')]
    assert all(ln.startswith("meta nfproto ipv4 meta mark set") for ln in bulk), bulk
    assert all(ln.startswith("meta nfproto ipv6 meta mark set") for ln in bulk6), bulk6
    office6 = [ln for ln in lines if ln.endswith('"class office/v6"')]
    assert all(ln.startswith("ip6 saddr { 2001:db8:10::/64 }") for ln in office6), office6


def test_each_twin_table_holds_routes_of_its_family_only() -> None:
    p = parse_policy_text(POLICY, "t.yaml")
    routes = plan.desired_routes(
        p, {"voice": ("lte", "via"), "voice/v6": ("lte/v6", "via"), "bulk/v6": (None, "unreachable")}
    )
    by_table: dict[int, set[int]] = {}
    for r in routes:
        by_table.setdefault(r.table, set()).add(r.family)
    assert by_table[p.uplinks["fiber"].table] == {4} and by_table[p.uplinks["fiber/v6"].table] == {6}
    assert by_table[p.uplinks["lte"].table] == {4} and by_table[p.uplinks["lte/v6"].table] == {6}
    assert by_table[p.classes["voice"].table] == {4}
    assert by_table[p.classes["voice/v6"].table] == {6}
    assert Route(p.classes["voice/v6"].table, 6, "unicast", None, "wwan0") in routes
    assert Route(p.classes["bulk/v6"].table, 6, "unreachable") in routes
    assert plan.class_families(p, "bulk/v6") == (6,)


def test_adoption_tells_the_twins_apart_by_the_route_family() -> None:
    p = parse_policy_text(POLICY, "t.yaml")
    held = [
        Route(p.classes["voice"].table, 4, "unicast", "192.0.2.1", "eth1"),
        Route(p.classes["voice/v6"].table, 6, "unicast", None, "wwan0"),
    ]
    assert plan.adopt(p, held) == {"voice": ("fiber", "via"), "voice/v6": ("lte/v6", "via")}


def test_alarm_routes_naming_a_file_name_take_both_twins() -> None:
    route = AlarmRouteSpec(None, None, frozenset({"fiber"}), ("pager",))
    assert route.matches("critical", "uplink-down", "fiber/v6")
    assert route.matches("critical", "uplink-down", "fiber")
    only6 = AlarmRouteSpec(None, None, frozenset({"fiber/v6"}), ("pager",))
    assert only6.matches("critical", "uplink-down", "fiber/v6")
    assert not only6.matches("critical", "uplink-down", "fiber")


async def test_failover_of_a_dual_stack_class_moves_both_families() -> None:
    g = EngineGateway(POLICY)
    reply = await dispatch(g, {"cmd": "failover", "class": "voice", "to": "lte", "reason": "test", "force": True})
    assert reply["ok"], reply
    assert {(o.cls, o.uplink) for o in g.state.overrides} == {("voice", "lte"), ("voice/v6", "lte/v6")}
    assert reply["overrides"] == ["o1", "o2"]
    # A twin by its own name is that twin alone; an uplink without the family is refused.
    reply = await dispatch(g, {"cmd": "failover", "class": "bulk/v6", "to": "lte", "reason": "t", "force": True})
    assert reply["ok"] and g.state.overrides[-1].uplink == "lte/v6", reply
    refused = await dispatch(g, {"cmd": "failover", "class": "voice", "to": "sat", "reason": "t", "force": True})
    assert not refused["ok"] and "carries no IPv6" in refused["error"], refused
    drained = await dispatch(g, {"cmd": "drain", "uplink": "fiber", "reason": "works", "force": True})
    assert drained["ok"], drained
    assert {o.uplink for o in g.state.overrides if o.kind == "drain"} == {"fiber", "fiber/v6"}


async def test_releasing_one_override_of_a_dual_stack_command_releases_its_twin() -> None:
    g = EngineGateway(POLICY)
    await dispatch(g, {"cmd": "failover", "class": "voice", "to": "lte", "reason": "test", "force": True})  # o1, o2
    await dispatch(g, {"cmd": "failover", "class": "bulk/v6", "to": "lte", "reason": "test", "force": True})  # o3
    await dispatch(g, {"cmd": "drain", "uplink": "fiber", "reason": "works", "force": True})  # o4, o5
    await dispatch(g, {"cmd": "drain", "uplink": "lte/v6", "reason": "works", "force": True})  # o6
    reply = await dispatch(g, {"cmd": "release", "override": "o2"})
    assert reply["ok"] and reply["text"].startswith("released o2 ") and "; released o1 " in reply["text"], reply
    assert [o.id for o in g.state.overrides] == ["o3", "o4", "o5", "o6"]
    # bulk/v6 was forced alone: its release is its own; a drain's twin goes with it, not another uplink's.
    assert (await dispatch(g, {"cmd": "release", "override": "o3"}))["text"].startswith("released o3 ")
    assert [o.id for o in g.state.overrides] == ["o4", "o5", "o6"]
    await dispatch(g, {"cmd": "release", "override": "o4"})
    assert [o.id for o in g.state.overrides] == ["o6"]
    refused = await dispatch(g, {"cmd": "release", "override": "o4"})
    assert not refused["ok"], refused
    # A drain of one twin that replaced its half of a dual-stack drain is its own command: released alone.
    await dispatch(g, {"cmd": "drain", "uplink": "fiber", "reason": "works", "force": True})  # o7, o8
    await dispatch(g, {"cmd": "drain", "uplink": "fiber/v6", "reason": "works", "for": "4h", "force": True})  # o9
    assert [o.id for o in g.state.overrides] == ["o6", "o7", "o9"]
    await dispatch(g, {"cmd": "release", "override": "o9"})
    assert [o.id for o in g.state.overrides] == ["o6", "o7"]


def test_a_timeline_releases_both_twins_as_the_daemon_does() -> None:
    events = [
        {"at": 1, "command": "failover", "class": "voice", "to": "lte", "reason": "t", "force": True},
        {"at": 2, "command": "release", "override": "o1"},
    ]
    sim = Simulation(parse_policy_text(POLICY, "t.yaml"), Timeline.model_validate({"duration": 5, "events": events}))
    sim.run()
    assert sim.state is not None and sim.state.overrides == ()


def status_of(g: EngineGateway) -> dict[str, Any]:
    """What `failoverctl status` gets from a daemon running this gateway's policy and state."""
    return {
        "site": "s",
        "policy": "t.yaml",
        "pid": 1,
        "uptime_s": 1.0,
        "clock": {"state": "sane"},
        "uplinks": uplink_rows(g.policy, g.state, {}),
        "classes": class_rows(g.policy, g.state),
        "overrides": [],
    }


def test_status_shows_a_dual_stack_uplink_on_one_line() -> None:
    g = EngineGateway(POLICY)
    st = status_of(g)
    text = render_status(st, tty=False)
    [line] = [ln for ln in text.splitlines() if ln.startswith("fiber ") and "IPv4" in ln]
    assert "IPv6" in line, text
    assert not any(ln.startswith("sat ") and "IPv4" in ln for ln in text.splitlines())


def test_status_and_check_columns_hold_long_twin_names() -> None:
    g = EngineGateway(POLICY.replace("fiber", "fiber-eastern").replace("office", "office-eastern"))
    st = status_of(g)
    lines = render_status(st, tty=False).splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("UPLINK"))
    rows = lines[head + 1 : head + 1 + len(st["uplinks"])]
    assert any(r.startswith("fiber-eastern/v6 ") for r in rows), lines
    for column in ("IFACE", "KIND", "STATE"):  # each value starts under its heading
        at = lines[head].index(column)
        assert all(r[at - 1] == " " and r[at] != " " for r in rows), (column, lines)
    head = next(i for i, ln in enumerate(lines) if ln.startswith("CLASS"))
    rows = lines[head + 1 : head + 1 + len(st["classes"])]
    assert any(r.startswith("office-eastern/v6 ") for r in rows), lines
    at = lines[head].index("ROUTE")
    assert all(r[at - 1] == " " and r[at] != " " for r in rows), lines
    head = lines.index("DUAL-STACK")
    assert lines[head + 1].index(" IPv4 ") == lines[head + 2].index(" IPv4 "), lines
    # failoverd check: every uplink's interface starts in one column, every class's match in one.
    text = summary(g.policy).splitlines()
    first = next(i for i, ln in enumerate(text) if ln.strip().startswith("uplinks ("))
    rows = text[first + 1 : first + 1 + len(g.policy.uplinks)]
    assert [ln.split()[0] for ln in rows] == list(g.policy.uplinks), text
    assert len({ln.index(u.interface + " ") for ln, u in zip(rows, g.policy.uplinks.values(), strict=True)}) == 1, text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("    admit: [voice]\n", "    admit: [voice]\n    standby: {mode: cold, activate: {run: [up]}}\n"),
            None,
        ),
        (
            (
                "  - name: fiber\n    interface: eth1\n",
                "  - name: fiber\n    interface: eth1\n    standby: {mode: cold, activate: {run: [up]}}\n",
            ),
            "cold standby is not supported on it yet",
        ),
        (("{uplink: lte/v6, every: 1d}", "{uplink: sat/v6, every: 1d}"), 'uplink "sat" is not dual-stack'),
        (('{address: "2001:db8::123", uplink: fiber}', '{address: "2001:db8::123", uplink: sat}'), "carries IPv4 only"),
        (
            ("    path: [fiber, six]\n", "    path: [sat]\n"),
            "matches IPv6 only, and no uplink in its path carries IPv6",
        ),
        (
            ('      - {kind: icmp, target: "2001:db8:ffff::1"}\n      - {kind: ndp-nexthop}\n', ""),
            "none of its probes is IPv6",
        ),
    ],
)
def test_what_a_dual_stack_policy_refuses(change: tuple[str, str], message: str | None) -> None:
    text = POLICY.replace(*change, 1)
    assert text != POLICY
    if message is None:
        parse_policy_text(text, "t.yaml")  # cold standby on a single-stack uplink is fine
        return
    with pytest.raises(PolicyError) as info:
        parse_policy_text(text, "t.yaml")
    assert any(message in str(p) for p in info.value.problems), info.value.problems


def test_the_example_policy_is_dual_stack() -> None:
    p = load_policy(EXAMPLE)
    assert {"fiber/v6", "lte/v6"} <= set(p.uplinks)
    assert {"voice/v6", "office/v6", "bulk/v6"} <= set(p.classes) and "cameras/v6" not in p.classes


# -- the engine over a dual-stack policy: it never mixes the families ------------------------------
DUAL = parse_policy_text(POLICY, "t.yaml")
V6_UPLINKS = [n for n, u in DUAL.uplinks.items() if u.family == 6]
DEVICES: dict[str, list[str]] = {}  # device -> the uplinks on it (a dual-stack one: both twins)
for _name, _u in DUAL.uplinks.items():
    DEVICES.setdefault(_u.interface, []).append(_name)


def _results(names: list[str]) -> st.SearchStrategy[ev.Event]:
    return st.sampled_from(names).flatmap(
        lambda u: st.builds(
            ev.ProbeResult,
            st.just(u),
            st.sampled_from([p.key for p in DUAL.uplinks[u].probes]),
            st.booleans(),
            st.floats(0.001, 0.5),
        )
    )


_any_event = st.one_of(
    _results(list(DUAL.uplinks)),
    _results(list(DUAL.uplinks)),
    st.builds(ev.CarrierChanged, st.sampled_from(list(DUAL.uplinks)), st.booleans()),
    # A device's carrier for both twins at once, as the link service tells it (services/links.py).
    st.builds(
        lambda dev, up: ev.CarrierBatch(tuple(ev.CarrierChanged(n, up) for n in DEVICES[dev])),
        st.sampled_from(sorted(DEVICES)),
        st.booleans(),
    ),
    st.just(ev.Tick()),
)


def run(
    timeline: Sequence[tuple[float, ev.Event]], policy: Policy, check: Callable[[EngineState], None]
) -> list[tuple[float, fx.Effect]]:
    """Step the engine through the timeline, timers delivered as the runtime does; `check` after each step."""
    t = 0.0
    state, effects = step(initial_state(policy, t), ev.Tick(), policy, t)
    out = [(t, e) for e in effects]
    for dt, event in timeline:
        while state.wake_at is not None and state.wake_at <= t + dt:
            state, effects = step(state, ev.Tick(), policy, state.wake_at)
            check(state)
            out += [(state.now, e) for e in effects]
        t += dt
        state, effects = step(state, event, policy, t)
        check(state)
        out += [(t, e) for e in effects]
    return out


# Every uplink answers every probe for a while: each class settles on the first uplink of its path.
SETTLED: list[tuple[float, ev.Event]] = [
    (0.1, ev.ProbeResult(name, p.key, True, 0.01))
    for _ in range(12)
    for name, u in DUAL.uplinks.items()
    for p in u.probes
]


def _families_hold(state: EngineState) -> None:
    for name, c in state.classes.items():
        if c.route == "via" and c.uplink is not None:
            assert DUAL.carries(c.uplink, DUAL.classes[name].family), f"{name} on {c.uplink}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.floats(0, 4), _any_event), min_size=1, max_size=120))
def test_no_class_is_ever_routed_over_an_uplink_of_the_other_family(timeline: list[tuple[float, ev.Event]]) -> None:
    run(timeline, DUAL, check=_families_hold)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.floats(0, 4), _results(V6_UPLINKS)), min_size=1, max_size=120))
def test_ipv6_evidence_alone_never_moves_an_ipv4_class(timeline: list[tuple[float, ev.Event]]) -> None:
    settled_at = sum(dt for dt, _ in SETTLED)
    effects = run(SETTLED + timeline, DUAL, check=_families_hold)
    placed = {e.cls: e.to_uplink for t, e in effects if isinstance(e, fx.SwitchClass) and t <= settled_at}
    assert placed["voice"] == "fiber" and placed["voice/v6"] == "fiber/v6", placed
    moved = [
        e for t, e in effects if t > settled_at and isinstance(e, fx.SwitchClass) and DUAL.classes[e.cls].family == 4
    ]
    assert not moved, moved


def test_a_fiber_cut_takes_both_families_down_at_once() -> None:
    """Carrier is the device's: a timeline's carrier change on fiber reaches fiber/v6 too."""
    timeline = Timeline.model_validate({"duration": 20, "events": [{"at": 5, "uplink": "fiber", "carrier": "down"}]})
    sim = Simulation(load_policy(EXAMPLE), timeline)
    sim.run()
    assert sim.state is not None
    where = {name: c.uplink for name, c in sim.state.classes.items()}
    assert where["voice"] == "lte" and where["voice/v6"] == "lte/v6", where
    assert not sim.state.uplinks["fiber/v6"].carrier


async def test_explain_of_a_dual_stack_class_covers_both_families() -> None:
    g = EngineGateway(POLICY)
    reply = await dispatch(g, {"cmd": "explain", "class": "voice"})
    assert reply["ok"], reply
    heads = [line for line in reply["chain"] if line.startswith("class ")]
    assert [h.split()[1] for h in heads] == ["voice", "voice/v6"], heads
