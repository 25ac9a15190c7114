"""Signed remote commands: who may command a gateway, where, and why a replay or a late command is refused."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from keys import operator_keys

from failoverd.cli import deployment_warnings
from failoverd.control import intake
from failoverd.control.commands import BadRequest, decode_request
from failoverd.control.engineonly import EngineGateway
from failoverd.control.mqtt import Fleet, clock_trusted
from failoverd.control.signing import (
    Here,
    KeyFileError,
    Verdict,
    canonical,
    fleet_dest,
    for_others,
    load_keys,
    load_private_key,
    misdirected,
    public_line,
    sign,
    site_dest,
    verify,
    write_keypair,
)
from failoverd.ctl import main as failoverctl
from failoverd.ctl import render_history, take_reply
from failoverd.engine.events import ClockState
from failoverd.errors import PolicyError
from failoverd.policy import parse_policy_text
from failoverd.services.base import Applied, Failed, NeedsRestart
from failoverd.services.history import History, Journal
from failoverd.services.supervisor import reload
from failoverd.statedir import StateDir

NOC, FIELD = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
KEYS = {"noc": NOC.public_key(), "field": FIELD.public_key()}
NOW = 1_800_000_000.0
FAILOVER = {"cmd": "failover", "class": "critical", "to": "sat", "reason": "drill", "id": "r1"}
NORTH = Here("failoverd", "north", fleet_topic=False)
TO_NORTH = site_dest("failoverd", "north")


def check(request: dict[str, Any], last: dict[str, float] | None = None, trusted: bool = True) -> Verdict:
    return verify(request, KEYS, last or {}, here=NORTH, wall=NOW, max_age=300, clock_trusted=trusted)


def signed(issued: float = NOW, key: str = "noc", private: Ed25519PrivateKey = NOC, **extra: Any) -> dict[str, Any]:
    return sign({**FAILOVER, **extra}, key, private, issued, TO_NORTH)


def test_a_signed_command_is_accepted_once_and_names_its_key() -> None:
    first = signed(NOW - 2)
    v = check(first)
    assert v.ok and v.key == "noc" and v.issued == NOW - 2 and v.reason == ""
    assert len(base64.b64decode(first["sig"], validate=True)) == 64  # Ed25519, base64 as documented
    again = check(first, last={"noc": v.issued})
    assert not again.ok and "replayed" in again.reason
    # A newer command under the same key passes; the other key keeps its own order.
    assert check(signed(NOW - 1), last={"noc": v.issued}).ok
    assert check(signed(NOW - 100, "field", FIELD), last={"noc": v.issued}).ok


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"to": "fiber"}, "bad signature"),  # an argument altered on the way
        ({"key": "field"}, "bad signature"),  # signed by one key, claimed for another
        ({"dest": site_dest("failoverd", "south")}, "bad signature"),  # the destination rewritten
        ({"dest": None}, "bad signature"),  # or dropped
        ({"key": "stranger"}, 'unknown key "stranger"'),
        ({"sig": ""}, "unsigned"),
        ({"sig": "not base64!"}, "bad signature"),
        ({"sig": base64.b64encode(b"short").decode()}, "bad signature"),
        ({"issued": "yesterday"}, "issued must be"),
    ],
)
def test_tampered_or_unsigned_commands_are_refused_with_the_reason(change: dict[str, Any], reason: str) -> None:
    v = check({**signed(), **change})
    assert not v.ok and reason in v.reason


def test_unsigned_and_keyless() -> None:
    assert "unsigned" in check(FAILOVER).reason
    keyless = verify(signed(), {}, {}, here=NORTH, wall=NOW, max_age=300, clock_trusted=True)
    assert "no command keys" in keyless.reason


def test_age_is_judged_only_while_the_clock_is_trusted() -> None:
    old = signed(NOW - 301)
    assert "too old" in check(old).reason
    assert "in the future" in check(signed(NOW + 301)).reason
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


# -- the destination --------------------------------------------------------------------------------
SOUTH = Here("failoverd", "south", fleet_topic=False)
NORTH_FLEET = Here("failoverd", "north", fleet_topic=True)


@pytest.mark.parametrize(
    ("dest", "here", "reason"),
    [
        (TO_NORTH, NORTH, ""),
        (fleet_dest("failoverd"), NORTH_FLEET, ""),
        (fleet_dest("failoverd/", ["south", "north"]), NORTH_FLEET, ""),
        (TO_NORTH, SOUTH, 'signed for site "north", not this one ("south")'),
        (TO_NORTH, NORTH_FLEET, 'signed for site "north" but sent on the fleet topic'),
        (fleet_dest("failoverd"), NORTH, 'signed for the fleet but sent on site "north"\'s own topic'),
        (fleet_dest("failoverd", ["south"]), NORTH_FLEET, "signed for sites south, not this one"),
        (site_dest("other", "north"), NORTH, "signed for topic prefix 'other'"),
        (fleet_dest("other"), NORTH_FLEET, "signed for topic prefix 'other'"),
        (None, NORTH, "no dest"),
        ("north", NORTH, "dest must be an object"),
        ({"prefix": "failoverd"}, NORTH, 'either "site" or "fleet"'),
        ({**TO_NORTH, "fleet": True}, NORTH, 'either "site" or "fleet"'),
        ({"prefix": "failoverd", "fleet": "yes"}, NORTH_FLEET, 'either "site" or "fleet"'),
        ({**TO_NORTH, "sites": ["north"]}, NORTH, "dest.sites goes with fleet"),
        ({"prefix": "failoverd", "site": 7}, NORTH, "dest.site must be a site name"),
        ({"prefix": "failoverd", "fleet": True, "sites": "north"}, NORTH_FLEET, "dest.sites must be a list"),
        ({**TO_NORTH, "topic": "x"}, NORTH, "unknown fields: topic"),
    ],
)
def test_a_gateway_takes_only_commands_signed_for_itself_on_that_topic(dest: Any, here: Here, reason: str) -> None:
    wrong = misdirected(dest, here)
    assert (reason in wrong) if reason else wrong == "", wrong


def test_a_command_captured_for_one_site_is_refused_on_every_other_topic() -> None:
    """The attack: the same bytes on another site's topic or the fleet's, where this key's last
    `issued` is older, so only the signed destination can stop it."""
    for_north = signed(NOW - 1)
    assert verify(for_north, KEYS, {}, here=NORTH, wall=NOW, max_age=300, clock_trusted=True).ok
    for here in (SOUTH, Here("failoverd", "south", fleet_topic=True), NORTH_FLEET):
        v = verify(for_north, KEYS, {}, here=here, wall=NOW, max_age=300, clock_trusted=True)
        assert not v.ok and v.reason.startswith("not for this gateway: signed for site"), (here, v)


def test_a_fleet_command_for_other_sites_is_left_unanswered() -> None:
    others = sign(FAILOVER, "noc", NOC, NOW, fleet_dest("failoverd", ["south"]))
    assert for_others(others, NORTH_FLEET)
    assert not for_others(others, Here("failoverd", "south", fleet_topic=True))
    assert not for_others(others, NORTH)  # on a site's topic it is refused, not ignored
    assert not for_others(sign(FAILOVER, "noc", NOC, NOW, fleet_dest("failoverd")), NORTH_FLEET)
    assert not for_others({**others, "dest": {"fleet": True, "sites": "south"}}, NORTH_FLEET)  # malformed: refused


def test_sites_that_cannot_be_a_topic_level_are_refused_when_mqtt_is_on() -> None:
    def policy(site: str, mqtt: str = "{enabled: true}") -> None:
        parse_policy_text(
            f"site: '{site}'\nuplinks: [{{name: a, interface: eth0, next_hop: 198.18.0.1}}]\n"
            f"classes: [{{name: all, path: [a]}}]\ncontrol: {{mqtt: {mqtt}}}\n",
            "t.yaml",
        )

    for site in ("fleet", "north/east", "north+", "#"):
        with pytest.raises(PolicyError, match="cannot be an MQTT topic level"):
            policy(site)
        policy(site, "{enabled: false}")  # no topics, no constraint
    with pytest.raises(PolicyError, match="topic_prefix"):
        policy("north", "{enabled: true, topic_prefix: 'a/#'}")
    policy("north-1.a_b")


# -- files --------------------------------------------------------------------------------------------
def test_keys_file_rules(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    noc, field = public_line("noc", KEYS["noc"]), public_line("field", KEYS["field"])
    f.write_text(f"# operators\n{noc}\n{field}  # the field team\n")
    f.chmod(0o644)  # public keys: anyone may read them
    loaded = load_keys(f)
    assert sorted(loaded) == ["field", "noc"]
    assert public_line("noc", loaded["noc"]) == noc
    f.chmod(0o664)
    with pytest.raises(KeyFileError, match="writable by others"):
        load_keys(f)
    f.chmod(0o600)
    raw = noc.split()[2]
    for text, message in [
        ("noc 00112233445566778899aabbccddeeff\n", ':1: noc is an HMAC key: .* "Migrating from HMAC keys"'),
        ("noc\n", ":1: expected NAME ed25519 PUBLIC-KEY"),
        (f"noc rsa {raw}\n", ":1: key noc: algorithm 'rsa' is not supported"),
        ("noc ed25519 AAAA\n", ":1: key noc: not a base64 Ed25519 public key"),
        ("noc ed25519 !!!!\n", "not a base64"),
        (f"n/oc ed25519 {raw}\n", "key name 'n/oc'"),
        (f"{noc}\n{noc}\n", ":2: key noc appears twice"),
        (f"{noc}\nother ed25519 {raw}\n", ":2: key other is the same public key as noc"),
        ("# nothing\n", "no keys"),
        (b"\xff\xfe", "codec can't decode"),
    ]:
        if isinstance(text, bytes):
            f.write_bytes(text)
        else:
            f.write_text(text)
        with pytest.raises(KeyFileError, match=message):
            load_keys(f)
    with pytest.raises(KeyFileError, match="No such file"):
        load_keys(tmp_path / "missing")


def test_private_keys_must_be_the_operators_alone(tmp_path: Path) -> None:
    key, keys_file = operator_keys(tmp_path, "noc")
    assert key.stat().st_mode & 0o777 == 0o600 and keys_file.stat().st_mode & 0o777 == 0o644
    private = load_private_key(key)
    assert public_line("noc", private.public_key()) == keys_file.read_text().strip()
    for mode in (0o640, 0o604, 0o660):
        key.chmod(mode)
        with pytest.raises(KeyFileError, match=f"open to group or others \\(mode {mode:o}\\); chmod 600"):
            load_private_key(key)
    key.chmod(0o600)
    key.write_text("not a key")
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
        load_private_key(key)
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key.write_bytes(pem)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_private_key(key)
    # A second operator shares the gateway's keys file.
    operator_keys(tmp_path, "field")
    assert sorted(load_keys(keys_file)) == ["field", "noc"]


def test_keygen_writes_a_keypair_and_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert failoverctl(["keygen", "noc", "--out", str(tmp_path)]) == 0
    key, pub = tmp_path / "noc.key", tmp_path / "noc.pub"
    assert key.stat().st_mode & 0o777 == 0o600 and pub.read_text().startswith("noc ed25519 ")
    assert pub.read_text().strip() in capsys.readouterr().out  # the line to put on gateways
    keys = load_keys(pub)  # the .pub file is itself a valid keys file
    request = sign(FAILOVER, "noc", load_private_key(key), NOW, TO_NORTH)
    assert verify(request, keys, {}, here=NORTH, wall=NOW, max_age=300, clock_trusted=True).ok
    before = key.read_bytes()
    assert failoverctl(["keygen", "noc", "--out", str(tmp_path)]) == 1
    assert "exists; not overwritten" in capsys.readouterr().err and key.read_bytes() == before
    assert failoverctl(["keygen", "../evil", "--out", str(tmp_path)]) == 1
    with pytest.raises(KeyFileError, match="key name"):
        write_keypair("", tmp_path)


def test_failoverctl_refuses_a_private_key_others_can_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, _ = operator_keys(tmp_path, "noc")
    key.chmod(0o644)
    # (refused before any broker is tried: 192.0.2.1 is a documentation address nobody answers on)
    argv = ["--mqtt", "192.0.2.1", "--site", "north", "--key-file", str(key), "--wait", "0.1", "status"]
    assert failoverctl(argv) == 1
    assert "open to group or others (mode 644); chmod 600 it" in capsys.readouterr().err
    assert (
        failoverctl(["--mqtt", "192.0.2.1", "--site", "north", "--sites", "a", "--key-file", str(key), "status"]) == 1
    )
    assert "--sites goes with --fleet" in capsys.readouterr().err


def test_check_warns_when_remote_commands_could_not_be_verified(tmp_path: Path) -> None:
    base = "site: t\nuplinks: [{name: a, interface: eth0, next_hop: 198.18.0.1}]\nclasses: [{name: all, path: [a]}]\n"
    keys = tmp_path / "keys"

    def warnings(mqtt: str) -> list[str]:
        return deployment_warnings(parse_policy_text(base + f"control: {{mqtt: {mqtt}}}\n", "t.yaml"))

    assert warnings("{enabled: false}") == []
    assert "every command is refused" in warnings("{enabled: true}")[0]
    assert "No such file" in warnings(f"{{enabled: true, keys_file: {keys}}}")[0]
    keys.write_text(public_line("noc", KEYS["noc"]) + "\n")
    keys.chmod(0o620)
    assert "writable by others" in warnings(f"{{enabled: true, keys_file: {keys}}}")[0]
    keys.chmod(0o644)
    assert warnings(f"{{enabled: true, keys_file: {keys}}}") == []
    keys.write_text("noc 00112233445566778899aabbccddeeff\n")
    assert "Migrating from HMAC keys" in warnings(f"{{enabled: true, keys_file: {keys}}}")[0]


# -- a gateway --------------------------------------------------------------------------------------
def gateway_text(site: str, mqtt: str) -> str:
    return (
        f"site: {site}\nuplinks: [{{name: a, interface: eth0, next_hop: 198.18.0.1}}]\n"
        f"classes: [{{name: all, path: [a]}}]\ncontrol: {{mqtt: {mqtt}}}\n"
    )


def request(key: Path, dest: dict[str, Any], name: str = "noc", **extra: Any) -> bytes:
    """What failoverctl would publish."""
    req = {"cmd": "explain", "class": "all", "id": "x", **extra}
    return json.dumps(sign(req, name, load_private_key(key), time.time(), dest)).encode()


async def test_a_gateway_takes_its_own_and_fleet_commands_and_says_why_it_refuses(tmp_path: Path) -> None:
    key, keys = operator_keys(tmp_path, "noc")
    d = EngineGateway(gateway_text("north", f"{{enabled: true, keys_file: {keys}}}"))
    fleet = Fleet(d, d.policy.control.mqtt, StateDir(tmp_path))
    own, everyone = fleet.cmd_topic, fleet.fleet_topic

    reply = await fleet.handle(own, request(key, TO_NORTH))
    assert reply is not None and reply["ok"] and reply["site"] == "north" and reply["id"] == "x", reply
    assert await fleet.handle(everyone, request(key, fleet_dest("failoverd", ["south"]))) is None  # not for us
    reply = await fleet.handle(everyone, request(key, fleet_dest("failoverd", ["south", "north"])))
    assert reply is not None and reply["ok"]
    reply = await fleet.handle(everyone, request(key, fleet_dest("failoverd")))
    assert reply is not None and reply["ok"]
    # The last accepted time survives a restart: the same bytes are a replay for a new session too.
    replay = request(key, TO_NORTH)
    assert (await fleet.handle(own, replay) or {})["ok"]
    again = Fleet(d, d.policy.control.mqtt, StateDir(tmp_path))
    assert "replayed" in (await again.handle(own, replay) or {})["error"]
    for topic, payload, reason in [
        (everyone, b"x" * 70_000, "at most"),
        (everyone, b"[1]", "JSON object"),
        (everyone, b"\xff", "not JSON"),
        (everyone, request(key, {"prefix": "failoverd", "fleet": True, "sites": "north"}), "dest.sites must be a list"),
        (own, request(key, site_dest("failoverd", "south")), 'signed for site "south"'),
        (own, request(key, fleet_dest("failoverd")), "signed for the fleet but sent on site"),
        (everyone, request(key, TO_NORTH), "sent on the fleet topic"),
        (own, json.dumps({"cmd": "explain", "class": "all", "sites": ["north"]}).encode(), "unsigned"),
    ]:
        reply = await fleet.handle(topic, payload)
        assert reply is not None and not reply["ok"] and reason in reply["error"], (payload[:20], reply)
    # The replay (by the second session) and the eight above: the first of an interval kept in the
    # history as themselves, with their reasons; the summary of the interval counts them all (intake).
    refused = [r for r in d.records if r["kind"] == "remote-refused"]
    assert len(refused) == 1 + intake.IN_FULL and len(d.records) == len(refused)
    assert 'signed for site "south"' in refused[-1]["reason"] and refused[-1]["key"] == "noc"
    fleet.intake.since -= intake.SUMMARY_EVERY
    fleet._summarise()
    assert d.records[-1]["kind"] == "remote-refused-summary" and d.records[-1]["refused"] == 8  # all of the interval's


async def test_a_command_replayed_on_another_gateway_is_refused_there(tmp_path: Path) -> None:
    """Two gateways, one key: what one accepted cannot be played to the other, on any topic."""
    key, keys = operator_keys(tmp_path, "noc")
    mqtt = f"{{enabled: true, keys_file: {keys}}}"
    north_gw, south_gw = EngineGateway(gateway_text("north", mqtt)), EngineGateway(gateway_text("south", mqtt))
    (tmp_path / "north").mkdir()
    (tmp_path / "south").mkdir()
    north = Fleet(north_gw, north_gw.policy.control.mqtt, StateDir(tmp_path / "north"))
    south = Fleet(south_gw, south_gw.policy.control.mqtt, StateDir(tmp_path / "south"))
    captured = json.dumps(
        sign(
            {"cmd": "drain", "uplink": "a", "reason": "works", "id": "d1"},
            "noc",
            load_private_key(key),
            time.time(),
            TO_NORTH,
        )
    ).encode()
    assert (await north.handle(north.cmd_topic, captured) or {})["ok"]
    for topic in (south.cmd_topic, south.fleet_topic):
        reply = await south.handle(topic, captured)
        assert reply is not None and not reply["ok"] and 'signed for site "north"' in reply["error"], reply
    reply = await north.handle(north.fleet_topic, captured)
    assert reply is not None and not reply["ok"] and "sent on the fleet topic" in reply["error"], reply
    assert not south_gw.state.overrides and north_gw.state.overrides  # only north drained
    assert south.last_issued == {}  # a refused command moves no key's order


async def test_deleting_a_key_and_reloading_revokes_it(tmp_path: Path) -> None:
    noc, keys = operator_keys(tmp_path / "k", "noc")
    field, _ = operator_keys(tmp_path / "k", "field")
    path = tmp_path / "policy.yaml"
    path.write_text(gateway_text("north", f"{{enabled: true, keys_file: {keys}}}"))
    d = EngineGateway(path.read_text())
    fleet = Fleet(d, d.policy.control.mqtt, StateDir(tmp_path))
    history = History(Journal(StateDir(None)))
    assert (await fleet.handle(fleet.cmd_topic, request(field, TO_NORTH, "field")) or {})["ok"]

    # The field key's line is deleted; a reload (not a restart) takes it away.
    keys.write_text("".join(line for line in keys.read_text().splitlines(True) if not line.startswith("field ")))
    report = await reload(path, d, [fleet], history)
    assert report["ok"] and report["services"]["mqtt"] == "applied: 1 command keys", report
    reply = await fleet.handle(fleet.cmd_topic, request(field, TO_NORTH, "field"))
    assert reply is not None and 'unknown key "field"' in reply["error"]
    assert (await fleet.handle(fleet.cmd_topic, request(noc, TO_NORTH)) or {})["ok"]

    # A keys file broken at reload: the reload says so, every command is refused with the reason.
    keys.write_text("noc 00112233445566778899aabbccddeeff\n")
    report = await reload(path, d, [fleet], history)
    assert not report["ok"] and report["services"]["mqtt"].startswith("failed: command keys:"), report
    assert "Migrating from HMAC keys" in report["problems"][0]
    assert fleet.status()["command_keys"].startswith("refused:")
    reply = await fleet.handle(fleet.cmd_topic, request(noc, TO_NORTH))
    assert reply is not None and "cannot check signatures" in reply["error"] and "HMAC" in reply["error"]

    # Another keys file, and max_age, are taken live; a new broker takes a restart.
    other_key, other_keys = operator_keys(tmp_path / "other", "ops")
    new = parse_policy_text(gateway_text("north", f"{{enabled: true, keys_file: {other_keys}, max_age: 60}}"), "t")
    assert await fleet.reconfigure(new) == Applied("1 command keys") and fleet.spec.max_age == 60
    assert (await fleet.handle(fleet.cmd_topic, request(other_key, TO_NORTH, "ops")) or {})["ok"]
    moved = parse_policy_text(gateway_text("north", f"{{enabled: true, keys_file: {keys}, host: b.example}}"), "t")
    result = await fleet.reconfigure(moved)
    assert isinstance(result, Failed) and "restart to apply" in result.why  # keys broken, broker moved
    keys.write_text(public_line("noc", load_private_key(noc).public_key()) + "\n")
    assert isinstance(await fleet.reconfigure(moved), NeedsRestart) and fleet.keys.keys() == {"noc"}


def test_history_shows_remote_refusals() -> None:
    reason = 'bad signature for key "noc"'
    record = {"wall": 0, "kind": "remote-refused", "cmd": "drain", "key": "noc", "reason": reason}
    assert 'REFUSED drain (key noc): bad signature for key "noc"' in render_history([record], tty=False)


@pytest.mark.parametrize("issued", [float("inf"), 1e300, 10**400, 0, -5, float("nan")])
def test_issued_must_be_a_plausible_unix_time(issued: float) -> None:
    """Before, inf (JSON 1e400) was accepted while the clock was distrusted and locked the key out for
    good; an integer past float range raised OverflowError inside verify."""
    request = {**FAILOVER, "key": "noc", "issued": issued, "dest": TO_NORTH}
    request["sig"] = base64.b64encode(NOC.sign(canonical(request))).decode()
    for trusted in (True, False):
        verdict = check(request, trusted=trusted)
        assert not verdict.ok and "issued must be" in verdict.reason, verdict


def test_numbers_past_float_range_are_not_json_for_us() -> None:
    with pytest.raises(BadRequest, match="out of range"):
        decode_request(b'{"cmd": "status", "issued": 1e400}')


def test_a_keys_file_another_user_could_change_is_refused(tmp_path: Path) -> None:
    _, keys = operator_keys(tmp_path, "noc")
    assert load_keys(keys)
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file to another user")
    os.chown(keys, 65534, -1)  # nobody: mode 644 stops nobody else, but its owner may rewrite it
    with pytest.raises(KeyFileError, match="owned by uid 65534"):
        load_keys(keys)


def test_keygen_leaves_no_half_keypair(tmp_path: Path) -> None:
    (tmp_path / "noc.pub").mkdir()  # a name in the way: the .pub cannot be made
    with pytest.raises(KeyFileError):
        write_keypair("noc", tmp_path)
    assert not (tmp_path / "noc.key").exists()


def test_an_empty_fleet_sites_list_reaches_no_gateway() -> None:
    assert fleet_dest("failoverd", []) == {"prefix": "failoverd", "fleet": True, "sites": []}
    assert for_others({"dest": fleet_dest("failoverd", [])}, Here("failoverd", "north", fleet_topic=True))


def test_failoverctl_refuses_an_empty_sites_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before, `--fleet --sites ,` signed a command for the whole fleet."""
    key, _ = operator_keys(tmp_path, "noc")
    argv = ["--mqtt", "192.0.2.1", "--fleet", "--sites", ",", "--key-file", str(key), "--wait", "0.1"]
    assert failoverctl([*argv, "drain", "a", "--reason", "x"]) == 1
    assert "--sites names no site" in capsys.readouterr().err


def test_a_reply_counts_for_the_site_whose_topic_it_came_on(capsys: pytest.CaptureFixture[str]) -> None:
    """The broker lets a gateway publish only on its own reply topic; the body is its own word. Before,
    a stolen gateway could answer for other sites in a fleet's output."""
    ok = json.dumps({"id": "r1", "site": "north", "ok": True}).encode()
    assert take_reply("failoverd/north/reply", ok, "r1", "failoverd") == {"id": "r1", "site": "north", "ok": True}
    assert take_reply("failoverd/south/reply", ok, "r1", "failoverd") is None  # south speaking for north
    assert "claims to be from 'north'" in capsys.readouterr().err
    assert take_reply("failoverd/north/reply", ok, "r2", "failoverd") is None  # another request's
    assert take_reply("failoverd/north/status", ok, "r1", "failoverd") is None
    assert take_reply("other/north/reply", ok, "r1", "failoverd") is None
    assert take_reply("failoverd/north/reply", b"\xff", "r1", "failoverd") is None
    bare = take_reply("failoverd/north/reply", b'{"id": "r1", "ok": false}', "r1", "failoverd")
    assert bare is not None and bare["site"] == "north"


async def test_a_command_refused_over_the_rate_stays_refused_after_a_restart(tmp_path: Path) -> None:
    """Before, the rate-limited command was marked seen in memory only: after a restart, the operator
    having been told "try again", a replay of it ran."""
    key, keys = operator_keys(tmp_path / "k", "noc")
    d = EngineGateway(gateway_text("north", f"{{enabled: true, keys_file: {keys}}}"))
    fleet = Fleet(d, d.policy.control.mqtt, StateDir(tmp_path))
    private, base = load_private_key(key), time.time()
    burst = int(intake.COMMANDS.burst)
    requests = [
        json.dumps(sign({"cmd": "explain", "class": "all", "id": f"r{n}"}, "noc", private, base + n, TO_NORTH)).encode()
        for n in range(burst + 1)
    ]
    for r in requests[:burst]:
        assert (await fleet.handle(fleet.cmd_topic, r) or {})["ok"]
    limited = await fleet.handle(fleet.cmd_topic, requests[-1])
    assert limited is not None and limited["error"].startswith("rate limited")
    fleet._summarise(idle=True)  # what the session does once the backlog is empty
    again = Fleet(d, d.policy.control.mqtt, StateDir(tmp_path))
    reply = await again.handle(again.cmd_topic, requests[-1])
    assert reply is not None and "replayed" in reply["error"], reply
