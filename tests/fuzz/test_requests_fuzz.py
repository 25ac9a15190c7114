"""Control requests on random input: the socket and MQTT answer with a reply or a refusal, never an exception."""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from budget import examples
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import example, given, settings
from hypothesis import strategies as st

from failoverd.control.commands import COMMANDS, dispatch
from failoverd.control.engineonly import EngineGateway
from failoverd.control.intake import Intake
from failoverd.control.mqtt import Fleet
from failoverd.control.signing import canonical, public_line, sign, site_dest
from failoverd.control.unix import ControlSocket, Peer
from failoverd.statedir import StateDir

# -- signing: the one place that knows the signature scheme (Ed25519, bound to a destination) ----------

PRIVATE = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
NORTH = site_dest("failoverd", "north")


def write_keys(directory: Path) -> Path:
    """A keys file holding the one operator key `noc`."""
    path = directory / "keys"
    path.write_text(public_line("noc", PRIVATE.public_key()) + "\n")
    return path


def signed(request: dict[str, Any], issued: float, dest: Any = NORTH) -> dict[str, Any]:
    """`request` as the operator `noc` would sign it at `issued`, for `dest` (the site north by default;
    any JSON value: a destination that sign() would not make must still be refused, never crash)."""
    if isinstance(dest, dict):
        return sign(request, "noc", PRIVATE, issued, dest)
    out = {**request, "key": "noc", "issued": round(issued, 6), "dest": dest}
    return {**out, "sig": base64.b64encode(PRIVATE.sign(canonical(out))).decode()}


def fresh(fleet: Fleet) -> Fleet:
    """The gateway with its request budgets full: otherwise, after the first few signed examples, the
    per-key rate would refuse the rest before they reach the command table."""
    fleet.intake = Intake(time.monotonic())
    return fleet


# -- the gateway under test ----------------------------------------------------------------------------

POLICY = """
site: north
uplinks:
  - {name: fiber, interface: eth0, next_hop: 198.18.0.1}
  - {name: lte, interface: wwan0, next_hop: 198.18.1.1}
classes:
  - {name: critical, path: [fiber, lte], match: [{dst: [192.0.2.10/32]}]}
  - {name: bulk, path: [fiber]}
"""
NAMES = ["fiber", "lte", "critical", "bulk", "o1", "o2", "north", ""]


def json_values(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaf,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=12,
    )


scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(NAMES),
    st.sampled_from(["30m", "1h", "0", "-1s", "1e999", "500ms", "9" * 30 + "d", "nan", "inf"]),
    st.text(max_size=10),
)
arg_keys = sorted({a.key for c in COMMANDS.values() for a in c.args} | {"cmd", "id", "sites", "key", "issued", "sig"})


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request that names a real command and mostly real arguments, of right and wrong types."""
    cmd = COMMANDS[draw(st.sampled_from(sorted(COMMANDS)))]
    out: dict[str, Any] = {"cmd": draw(st.just(cmd.name) | scalar | st.lists(st.just(cmd.name), max_size=2))}
    for a in cmd.args:
        if draw(st.booleans()):
            out[a.key] = draw(scalar | json_values(scalar))
    if draw(st.booleans()):
        out[draw(st.sampled_from(arg_keys))] = draw(json_values(scalar))
    return out


raw_lines = st.one_of(
    st.binary(max_size=80),
    json_values(scalar).map(lambda v: json.dumps(v).encode()),
    requests().map(lambda r: json.dumps(r).encode()),
)


def check_reply(reply: Any) -> None:
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        assert isinstance(reply.get("error"), str) and reply["error"], reply
    json.dumps(reply, allow_nan=False)  # what goes back on the wire is JSON


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    with asyncio.Runner() as runner:
        yield runner.get_loop()


# -- the control socket --------------------------------------------------------------------------------

NESTED = b"[" * 100_000 + b"]" * 100_000


def test_a_nan_duration_from_within_is_refused_too(loop: asyncio.AbstractEventLoop) -> None:
    """Before: `for` NaN passed the engine's positive and max_override checks, an override that never expires."""
    g = EngineGateway(POLICY)
    reply = loop.run_until_complete(dispatch(g, {"cmd": "drain", "uplink": "lte", "reason": "x", "for": float("nan")}))
    assert reply["ok"] is False and "expected a duration" in reply["error"], reply
    assert g.state.overrides == ()


@pytest.mark.parametrize(
    "line",
    [
        b"\xff\n",  # UnicodeDecodeError escaped answer(): the client got no reply, the connection closed
        b'{"cmd": "history", "last": ' + b"9" * 5000 + b"}",  # ValueError: int of more than 4300 digits
        NESTED,  # RecursionError
        b'{"cmd": "drain", "uplink": "fiber", "reason": "x", "for": NaN}',  # NaN reached the engine as a TTL
    ],
    ids=["not-utf8", "huge-int", "deep", "nan"],
)
def test_lines_that_escaped_the_socket_are_refused(loop: asyncio.AbstractEventLoop, line: bytes) -> None:
    sock = ControlSocket(EngineGateway(POLICY), "/nonexistent/ctl.sock")
    reply = loop.run_until_complete(sock.answer(line, True, Peer(1, 0, "root")))
    assert reply["ok"] is False and reply["error"].startswith("not JSON"), reply


@pytest.fixture(scope="module")
def gateway() -> EngineGateway:
    return EngineGateway(POLICY)  # one for all examples: overrides pile up, as on a gateway that runs


@settings(max_examples=examples(150))
@given(raw_lines, st.booleans())
@example(b'{"cmd": ["status"]}', True)
def test_socket_lines(loop: asyncio.AbstractEventLoop, gateway: EngineGateway, line: bytes, writable: bool) -> None:
    sock = ControlSocket(gateway, "/nonexistent/ctl.sock")
    check_reply(loop.run_until_complete(sock.answer(line, writable, Peer(1, 1000, "alice"))))


# -- MQTT ----------------------------------------------------------------------------------------------


class Clock:
    """Strictly increasing `issued` values near now, so validly signed requests pass the replay check."""

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> float:
        self.n += 1
        return round(time.time(), 3) + self.n * 0.001


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with tempfile.TemporaryDirectory() as d:
        keys = write_keys(Path(d))
        g = EngineGateway(POLICY + f"control: {{mqtt: {{enabled: true, keys_file: {keys}}}}}\n")
        state = Path(d) / "state"
        state.mkdir()
        yield Fleet(g, g.policy.control.mqtt, StateDir(state))


ISSUED = Clock()


def check_mqtt(reply: Any, fleet: Fleet) -> None:
    if reply is None:
        return
    check_reply(reply)
    assert reply["site"] == fleet.site


def test_a_signed_request_naming_no_string_command_is_refused(loop: asyncio.AbstractEventLoop, fleet: Fleet) -> None:
    """Before, `COMMANDS.get(["drain"])` raised TypeError (unhashable) once the signature held."""
    payload = json.dumps(signed({"cmd": ["drain"]}, ISSUED.next())).encode()
    reply = loop.run_until_complete(fresh(fleet).handle(fleet.cmd_topic, payload))
    assert reply is not None and reply["ok"] is False and "unknown command" in reply["error"], reply


@pytest.mark.parametrize(
    "payload",
    [b'{"cmd": "status", "x": ' + b"1" * 5000 + b"}", NESTED[:60_000] + b"]", b'{"issued": NaN}'],
    ids=["huge-int", "deep", "nan"],
)
def test_payloads_that_escaped_mqtt_are_refused(loop: asyncio.AbstractEventLoop, fleet: Fleet, payload: bytes) -> None:
    reply = loop.run_until_complete(fresh(fleet).handle(fleet.cmd_topic, payload))
    assert reply is not None and reply["ok"] is False and reply["error"].startswith("not JSON"), reply


@settings(max_examples=examples(150))
@given(
    st.one_of(raw_lines, requests().map(lambda r: json.dumps(signed(r, ISSUED.next())).encode())),
    st.sampled_from(["cmd", "fleet", "other"]),
    st.one_of(st.none(), st.lists(st.sampled_from(NAMES), max_size=3), json_values(scalar)),
)
def test_mqtt_payloads(loop: asyncio.AbstractEventLoop, fleet: Fleet, payload: bytes, where: str, sites: Any) -> None:
    topic = {"cmd": fleet.cmd_topic, "fleet": fleet.fleet_topic, "other": "failoverd/south/cmd"}[where]
    if sites is not None and payload.startswith(b"{"):
        try:
            request = json.loads(payload)
            dest = {"prefix": "failoverd", "fleet": True, "sites": sites}  # the sites are signed, in dest
            payload = json.dumps(signed(request, ISSUED.next(), dest)).encode()
        except ValueError:
            pass
    check_mqtt(loop.run_until_complete(fresh(fleet).handle(topic, payload)), fleet)


@settings(max_examples=examples(30))
@given(requests(), st.floats(-1e12, 1e12) | st.sampled_from([0.0, -0.0, 1e300]))
def test_mqtt_signed_at_any_time(loop: asyncio.AbstractEventLoop, fleet: Fleet, request: dict, issued: float) -> None:
    payload = json.dumps(signed(request, issued)).encode()
    check_mqtt(loop.run_until_complete(fresh(fleet).handle(fleet.cmd_topic, payload)), fleet)


WELL_FORMED = [
    {"prefix": prefix, **rest}
    for prefix in ("failoverd", "other")
    for rest in (
        {"site": "north"},
        {"site": "south"},
        {"fleet": True},
        {"fleet": True, "sites": ["north"]},
        {"fleet": True, "sites": ["south"]},
        {"fleet": True, "sites": []},
        {"site": "north", "fleet": True},
        {"site": "north", "sites": ["north"]},
    )
]
DESTS = st.one_of(
    st.sampled_from(WELL_FORMED),  # the near misses, often enough to matter
    json_values(scalar),
    st.fixed_dictionaries(
        {"prefix": st.sampled_from(["failoverd", "other", "", "failoverd/"])},
        optional={
            "site": st.one_of(st.sampled_from(NAMES), json_values(scalar)),
            "fleet": st.one_of(st.booleans(), json_values(scalar)),
            "sites": st.one_of(st.lists(st.sampled_from(NAMES), max_size=3), json_values(scalar)),
        },
    ),
)


@settings(max_examples=examples(60))
@given(requests(), DESTS, st.sampled_from(["cmd", "fleet"]))
def test_mqtt_signed_for_any_destination(
    loop: asyncio.AbstractEventLoop, fleet: Fleet, request: dict, dest: Any, where: str
) -> None:
    topic = fleet.cmd_topic if where == "cmd" else fleet.fleet_topic
    payload = json.dumps(signed(request, ISSUED.next(), dest)).encode()
    reply = loop.run_until_complete(fresh(fleet).handle(topic, payload))
    check_mqtt(reply, fleet)
    # The property itself, by an oracle written apart from signing.py: a validly signed command acts
    # exactly when its signed destination names this gateway on the topic it came in on.
    match addressed(dest, fleet_topic=where == "fleet"):
        case "silent":
            assert reply is None
        case "no":
            assert reply is not None and reply["error"].startswith("not for this gateway"), (dest, where, reply)
        case _:
            assert reply is not None and "not for this gateway" not in reply.get("error", ""), (dest, where, reply)


def addressed(dest: Any, fleet_topic: bool) -> str:
    """Whether `dest` names the gateway `north` (prefix `failoverd`): "yes", "no", or "silent" (a fleet
    command for named sites without it, left unanswered)."""
    if fleet_topic and isinstance(dest, dict) and dest.get("fleet") is True:
        sites = dest.get("sites")
        if isinstance(sites, list) and all(isinstance(x, str) for x in sites) and "north" not in sites:
            return "silent"
    if not isinstance(dest, dict) or set(dest) - {"prefix", "site", "fleet", "sites"}:
        return "no"
    if dest.get("prefix") != "failoverd":
        return "no"
    site, fleet = dest.get("site"), dest.get("fleet")
    if site is not None and fleet is None and "sites" not in dest:
        return "yes" if site == "north" and not fleet_topic else "no"
    if fleet is True and site is None:
        sites = dest.get("sites")
        named = sites is None or (
            isinstance(sites, list) and all(isinstance(x, str) for x in sites) and "north" in sites
        )
        return "yes" if fleet_topic and named else "no"
    return "no"


def test_fuzzing_left_the_gateway_usable(loop: asyncio.AbstractEventLoop, fleet: Fleet) -> None:
    payload = json.dumps(signed({"cmd": "status"}, ISSUED.next() + 10)).encode()
    reply = loop.run_until_complete(fresh(fleet).handle(fleet.cmd_topic, payload))
    assert reply is not None and reply["ok"], reply
