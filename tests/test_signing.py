"""Signed remote commands: who may command a gateway, and why a replay or a late command is refused."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeGateway

from failoverd.cli import deployment_warnings
from failoverd.control.mqtt import Fleet, clock_trusted
from failoverd.control.signing import KeyFileError, Verdict, load_keys, sign, verify
from failoverd.ctl import render_history
from failoverd.engine.events import ClockState
from failoverd.policy import parse_policy_text
from failoverd.statedir import StateDir

NOC = bytes.fromhex("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
KEYS = {"noc": NOC, "field": bytes(range(16))}
NOW = 1_800_000_000.0
FAILOVER = {"cmd": "failover", "class": "critical", "to": "sat", "reason": "drill", "id": "r1"}


def check(request: dict[str, Any], last: dict[str, float] | None = None, trusted: bool = True) -> Verdict:
    return verify(request, KEYS, last or {}, wall=NOW, max_age=300, clock_trusted=trusted)


def test_a_signed_command_is_accepted_once_and_names_its_key() -> None:
    signed = sign(FAILOVER, "noc", NOC, NOW - 2)
    v = check(signed)
    assert v.ok and v.key == "noc" and v.issued == NOW - 2 and v.reason == ""
    again = check(signed, last={"noc": v.issued})
    assert not again.ok and "replayed" in again.reason
    # A newer command under the same key passes; the other key keeps its own order.
    assert check(sign(FAILOVER, "noc", NOC, NOW - 1), last={"noc": v.issued}).ok
    assert check(sign(FAILOVER, "field", KEYS["field"], NOW - 100), last={"noc": v.issued}).ok


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"to": "fiber"}, "bad signature"),  # an argument altered on the way
        ({"key": "field"}, "bad signature"),  # signed by one key, claimed for another
        ({"key": "stranger"}, 'unknown key "stranger"'),
        ({"sig": ""}, "unsigned"),
        ({"issued": "yesterday"}, "issued must be"),
    ],
)
def test_tampered_or_unsigned_commands_are_refused_with_the_reason(change: dict, reason: str) -> None:
    v = check({**sign(FAILOVER, "noc", NOC, NOW), **change})
    assert not v.ok and reason in v.reason


def test_unsigned_and_keyless() -> None:
    assert "unsigned" in check(FAILOVER).reason
    assert (
        "no command keys"
        in verify(sign(FAILOVER, "noc", NOC, NOW), {}, {}, wall=NOW, max_age=300, clock_trusted=True).reason
    )


def test_age_is_judged_only_while_the_clock_is_trusted() -> None:
    old = sign(FAILOVER, "noc", NOC, NOW - 301)
    assert "too old" in check(old).reason
    future = sign(FAILOVER, "noc", NOC, NOW + 301)
    assert "in the future" in check(future).reason
    # With the clock distrusted the order still protects, and the reply says what was not checked.
    v = check(old, trusted=False)
    assert v.ok and "age not checked" in v.reason
    assert not check(old, last={"noc": NOW - 301}, trusted=False).ok


def test_the_policy_decides_when_the_clock_is_not_trusted_for_commands() -> None:
    text = """
site: t
uplinks: [{name: a, interface: eth0, next_hop: 198.18.0.1}]
classes: [{name: all, path: [a]}]
clock:
  on_suspect: {distrust: []}
  on_insane: {distrust: [signed-commands]}
"""
    policy = parse_policy_text(text, "t.yaml")
    assert clock_trusted(policy, ClockState.SANE) and clock_trusted(policy, ClockState.UNKNOWN)
    assert clock_trusted(policy, ClockState.SUSPECT)
    assert not clock_trusted(policy, ClockState.INSANE)


def test_keys_file_rules(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text(f"# operators\nnoc {NOC.hex()}\nfield {bytes(range(16)).hex()}  # the field team\n")
    f.chmod(0o600)
    assert load_keys(f) == KEYS
    f.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        load_keys(f)
    f.chmod(0o600)
    for text, message in [
        ("noc\n", ":1: expected NAME SECRET"),
        (f"noc {NOC.hex()}\nshort abcd\n", ":2: the secret of short is shorter than 128 bits"),
        ("noc zz\n", "not hex"),
        (f"noc {NOC.hex()}\nnoc {NOC.hex()}\n", "appears twice"),
        ("# nothing\n", "no keys"),
    ]:
        f.write_text(text)
        with pytest.raises(KeyFileError, match=message):
            load_keys(f)
    with pytest.raises(KeyFileError, match="No such file"):
        load_keys(tmp_path / "missing")


def test_check_warns_when_remote_commands_could_not_be_verified(tmp_path: Path) -> None:

    base = "site: t\nuplinks: [{name: a, interface: eth0, next_hop: 198.18.0.1}]\nclasses: [{name: all, path: [a]}]\n"
    keys = tmp_path / "keys"

    def warnings(mqtt: str) -> list[str]:
        return deployment_warnings(parse_policy_text(base + f"control: {{mqtt: {mqtt}}}\n", "t.yaml"))

    assert warnings("{enabled: false}") == []
    assert "every command is refused" in warnings("{enabled: true}")[0]
    assert "No such file" in warnings(f"{{enabled: true, keys_file: {keys}}}")[0]
    keys.write_text(f"noc {NOC.hex()}\n")
    keys.chmod(0o640)
    assert "readable by others" in warnings(f"{{enabled: true, keys_file: {keys}}}")[0]
    keys.chmod(0o600)
    assert warnings(f"{{enabled: true, keys_file: {keys}}}") == []


async def test_a_gateway_takes_its_own_and_fleet_commands_and_says_why_it_refuses(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"noc {NOC.hex()}\n")
    keys.chmod(0o600)
    d = FakeGateway(
        "site: north\nuplinks: [{name: a, interface: eth0, next_hop: 198.18.0.1}]\nclasses: [{name: all, path: [a]}]\n"
        f"control: {{mqtt: {{enabled: true, keys_file: {keys}}}}}\n"
    )
    fleet = Fleet(d, d.policy.control.mqtt, StateDir(tmp_path))
    own, everyone = fleet.cmd_topic, fleet.fleet_topic

    def req(**extra: Any) -> bytes:
        request = {"cmd": "explain", "class": "all", "id": "x", **extra}
        return json.dumps(sign(request, "noc", NOC, time.time())).encode()

    reply = await fleet.handle(own, req())
    assert reply is not None and reply["ok"] and reply["site"] == "north" and reply["id"] == "x", reply
    assert await fleet.handle(everyone, req(sites=["south"])) is None  # for other gateways: no answer
    reply = await fleet.handle(everyone, req(sites=["south", "north"]))
    assert reply is not None and reply["ok"]
    # The last accepted time survives a restart: the same bytes are a replay for a new session too.
    replay = req()
    assert (await fleet.handle(own, replay) or {})["ok"]
    again = Fleet(d, d.policy.control.mqtt, StateDir(tmp_path))
    assert "replayed" in (await again.handle(own, replay) or {})["error"]
    for payload, reason in [
        (b"x" * 70_000, "at most"),
        (b"[1]", "JSON object"),
        (b"\xff", "not JSON"),
        (req(sites="north"), "sites must be a list"),
    ]:
        reply = await fleet.handle(everyone, payload)
        assert reply is not None and not reply["ok"] and reason in reply["error"], (payload[:20], reply)
    assert [r["kind"] for r in d.records] == [
        "remote-refused"
    ] * 5  # the replay and the four above, each kept in the history


def test_history_shows_remote_refusals() -> None:
    reason = 'bad signature for key "noc"'
    record = {"wall": 0, "kind": "remote-refused", "cmd": "drain", "key": "noc", "reason": reason}
    assert 'REFUSED drain (key noc): bad signature for key "noc"' in render_history([record], tty=False)
