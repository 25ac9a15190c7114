"""Fleet control over a real mosquitto: retained status and last will, events, signed commands, refusals,
and a captured command replayed to another gateway."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from keys import operator_keys
from netlab import GatewayLab, PeerGateway, failoverctl_in, peer

from failoverd.control.signing import load_private_key, sign, site_dest
from lab.netns import wait_for

BROKER = "198.19.2.1"
SITE = "test-gw"


def broker(lab: GatewayLab, again: bool = False) -> subprocess.Popen[bytes]:
    """mosquitto on the internet side: the gateway reaches it over whichever uplink carries its traffic."""
    if not again:
        lab.topo.addr("inet", "lo", f"{BROKER}/32")
    conf = lab.tmp / "mosquitto.conf"
    conf.write_text(f"listener 1883 {BROKER}\nallow_anonymous true\npersistence false\n")
    proc = lab.topo.spawn("inet", ["mosquitto", "-c", str(conf)], log=lab.tmp / "mosquitto.log")
    wait_for(lambda: lab.topo.sh("inet", "ss", "-ltn").stdout.count(f"{BROKER}:1883") > 0, 10, what="mosquitto")
    return proc


def enable_mqtt(lab: GatewayLab | PeerGateway, keys_file: Path) -> None:
    text = lab.policy_path.read_text()
    mqtt = f"  mqtt: {{enabled: true, host: {BROKER}, keys_file: {keys_file}, keepalive: 2s, unreachable_alarm: 2s}}\n"
    lab.policy_path.write_text(text.replace("control:\n", "control:\n" + mqtt, 1))


def remote(lab: GatewayLab, key_file: Path, *args: str, wait: str = "5") -> tuple[int, Any]:
    """failoverctl over MQTT, from the operations side (the internet namespace)."""
    return failoverctl_in(lab.topo, "inet", "--mqtt", BROKER, "--key-file", str(key_file), "--wait", wait, *args)


def retained(lab: GatewayLab, topic: str) -> dict[str, Any]:
    """The retained message of a topic ({} if there is none yet)."""
    r = lab.topo.sh("inet", "mosquitto_sub", "-h", BROKER, "-t", topic, "-C", "1", "-W", "2", check=False)
    doc: dict[str, Any] = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else {}
    return doc


def publish(lab: GatewayLab, topic: str, payload: str) -> None:
    lab.topo.sh("inet", "mosquitto_pub", "-h", BROKER, "-q", "1", "-t", topic, "-m", payload)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_fleet_control_over_mqtt(gwlab: GatewayLab) -> None:
    mosquitto = broker(gwlab)
    noc, keys_file = operator_keys(gwlab.tmp / "operators", "noc")
    enable_mqtt(gwlab, keys_file)
    events, replies = gwlab.tmp / "events.jsonl", gwlab.tmp / "replies.jsonl"
    for topic, out in ((f"failoverd/{SITE}/events", events), (f"failoverd/{SITE}/reply", replies)):
        gwlab.topo.spawn("inet", ["mosquitto_sub", "-h", BROKER, "-q", "1", "-t", topic], log=out)
    gwlab.start()
    gwlab.wait_class("critical", "fiber")

    # The retained status tells a fleet dashboard where this gateway's traffic goes.
    wait_for(lambda: retained(gwlab, f"failoverd/{SITE}/status").get("classes", {}).get("critical") == "via fiber", 10)
    status = retained(gwlab, f"failoverd/{SITE}/status")
    assert status["online"] is True and status["uplinks"]["fiber"] == "UP"

    # A signed manual failover, sent to this site.
    rc, reply = remote(gwlab, noc, "--site", SITE, "failover", "critical", "--to", "mobile", "--reason", "drill")
    assert rc == 0 and reply["ok"] and reply["site"] == SITE, reply
    assert gwlab.cls("critical") == "mobile"
    override = gwlab.ctl("status")["overrides"][0]
    assert override["by"].startswith("mqtt:noc/failoverctl:")
    wait_for(lambda: any(e.get("kind") == "decision" and e["uplink"] == "mobile" for e in lines(events)), 10)
    # (while the session moves, the retained status may briefly be the broker's will: offline, no classes)
    wait_for(lambda: retained(gwlab, f"failoverd/{SITE}/status").get("classes", {}).get("critical") == "via mobile", 10)

    # Signed with a key the gateway does not hold under that name: refused, nothing moves.
    impostor, _ = operator_keys(gwlab.tmp / "impostor", "noc")
    rc, reply = remote(gwlab, impostor, "--site", SITE, "drain", "mobile", "--reason", "x")
    assert rc == 1 and "bad signature" in reply["error"], reply
    # A command replayed from the wire: the first copy acts, the second is refused.
    req = sign(
        {"cmd": "explain", "class": "critical", "id": "replay-1"},
        "noc",
        load_private_key(noc),
        time.time(),
        site_dest("failoverd", SITE),
    )
    publish(gwlab, f"failoverd/{SITE}/cmd", json.dumps(req))
    publish(gwlab, f"failoverd/{SITE}/cmd", json.dumps(req))
    publish(gwlab, f"failoverd/{SITE}/cmd", "{not json")
    publish(gwlab, f"failoverd/{SITE}/cmd", json.dumps({"cmd": "release", "all": True}))

    def refusals() -> list[str]:
        return [r["error"] for r in lines(replies) if not r["ok"]]

    wait_for(lambda: len(refusals()) >= 4, 10, what="four refusals")
    answered = [r for r in lines(replies) if r["id"] == "replay-1"]
    assert [r["ok"] for r in answered] == [True, False] and "replayed" in answered[1]["error"]
    assert any(e.startswith("not JSON") for e in refusals())
    assert any(e.startswith("unsigned") for e in refusals())
    assert gwlab.cls("critical") == "mobile"  # none of them touched the override
    refused = [r for r in gwlab.ctl("history", "--last", "200")["records"] if r["kind"] == "remote-refused"]
    assert len(refused) >= 4

    # The fleet topic: a command for other sites is not answered here; one for all is.
    # (no reply is the point: 2 s of silence, as a gateway answers within milliseconds)
    rc, reply = remote(gwlab, noc, "--fleet", "--sites", "elsewhere", "release", "--all", wait="2")
    assert rc == 3 and gwlab.cls("critical") == "mobile"
    rc, reply = remote(gwlab, noc, "--fleet", "release", "--all")
    assert rc == 0 and [r["site"] for r in reply] == [SITE] and reply[0]["ok"], reply
    gwlab.wait_class("critical", "fiber", timeout=10)

    # The session rides the first usable uplink; when that one fails it moves at once, not after
    # keepalives, and the status shows the failover it just made.
    gwlab.carrier(False)
    gwlab.wait_class("critical", "mobile", timeout=5)
    # (while the session moves, the retained status may briefly be the broker's will: offline, no classes)
    wait_for(lambda: retained(gwlab, f"failoverd/{SITE}/status").get("classes", {}).get("critical") == "via mobile", 10)
    assert "mqtt-rerouting" in gwlab.log.read_text()
    # An alarm acknowledged over MQTT, signed like every command: the ack names the key.
    rc, reply = remote(gwlab, noc, "--site", SITE, "ack", "uplink-down:fiber", "--reason", "crew dispatched")
    assert rc == 0 and reply["ok"], reply
    fiber = next(a for a in gwlab.ctl("alarms")["alarms"] if a["id"] == "uplink-down:fiber")
    assert fiber["acked"]["by"].startswith("mqtt:noc/"), fiber
    gwlab.carrier(True)

    # The broker gone: after unreachable_alarm (2 s here) an alarm says so; back, the alarm clears.
    def mqtt_alarm() -> bool:
        return any(a["id"] == "mqtt-unreachable:mqtt" for a in gwlab.ctl("alarms")["alarms"])

    gwlab.topo.stop(mosquitto)
    wait_for(mqtt_alarm, 15, what="the mqtt-unreachable alarm")
    mosquitto = broker(gwlab, again=True)
    wait_for(lambda: not mqtt_alarm(), 20, what="the mqtt-unreachable alarm cleared")
    wait_for(lambda: retained(gwlab, f"failoverd/{SITE}/status").get("online") is True, 10, what="online again")

    # A clean stop says so; a gateway that vanishes is reported by the broker's last will.
    gwlab.kill(signal.SIGTERM)
    stopped = retained(gwlab, f"failoverd/{SITE}/status")
    assert stopped["online"] is False and stopped["why"] == "stopped", stopped
    gwlab.start()
    wait_for(lambda: retained(gwlab, f"failoverd/{SITE}/status").get("online") is True, 10, what="online again")
    records = gwlab.ctl("history", "--last", "500")["records"]
    assert not [r for r in records if r["kind"] == "alarm" and r["cause"]["code"] == "unclean-exit"]  # it was clean
    gwlab.kill(signal.SIGKILL)
    wait_for(lambda: retained(gwlab, f"failoverd/{SITE}/status").get("why") == "connection lost", 10, what="last will")


def test_a_captured_command_replayed_to_another_gateway_or_the_fleet_is_refused(gwlab: GatewayLab) -> None:
    """Two gateways on one broker, one operator key. A legit drain for this site, captured off the
    broker and replayed byte for byte on the other site's topic and on the fleet topic, acts nowhere."""
    broker(gwlab)
    noc, keys_file = operator_keys(gwlab.tmp / "operators", "noc")
    field, _ = operator_keys(gwlab.tmp / "operators", "field")
    other = peer(gwlab, "other-gw")
    for gw in (gwlab, other):
        enable_mqtt(gw, keys_file)
    captured, replies = gwlab.tmp / "captured.txt", gwlab.tmp / "replies.jsonl"
    sub = ["mosquitto_sub", "-h", BROKER, "-q", "1"]
    gwlab.topo.spawn("inet", [*sub, "-v", "-t", f"failoverd/{SITE}/cmd"], log=captured)  # -v: "topic payload"
    gwlab.topo.spawn("inet", [*sub, "-t", "failoverd/+/reply"], log=replies)
    gwlab.start()
    other.start()
    for status in (f"failoverd/{SITE}/status", f"failoverd/{other.site}/status"):
        wait_for(lambda t=status: retained(gwlab, t).get("online") is True, 15, what=status)

    rc, reply = remote(gwlab, noc, "--site", SITE, "drain", "fiber", "--reason", "legit")
    assert rc == 0 and reply["ok"], reply
    gwlab.wait_class("critical", "mobile")
    wait_for(lambda: captured.read_text().endswith("\n"), 5, what="the captured command")
    topic, _, payload = captured.read_text().removesuffix("\n").partition(" ")
    assert topic == f"failoverd/{SITE}/cmd" and json.loads(payload)["cmd"] == "drain"
    rid = json.loads(payload)["id"]

    for where in (f"failoverd/{other.site}/cmd", "failoverd/fleet/cmd"):
        publish(gwlab, where, payload)  # the same bytes (failoverctl's JSON is ASCII)

    def answers() -> list[dict[str, Any]]:
        return [r for r in lines(replies) if r.get("id") == rid]

    # the legit reply, two refusals from the other gateway, one from this one (the fleet copy)
    wait_for(lambda: len(answers()) >= 4, 10, what="four replies")
    time.sleep(0.5)  # nothing more comes
    by_site = {s: [r for r in answers() if r["site"] == s] for s in (SITE, other.site)}
    assert [r["ok"] for r in by_site[other.site]] == [False, False], by_site
    for r in by_site[other.site]:
        assert 'not for this gateway: signed for site "test-gw"' in r["error"], r
    # The other gateway drained nothing, and kept both refusals in its history.
    status = other.ctl("status")
    assert status["overrides"] == [] and not any(u["drained"] for u in status["uplinks"]), status
    refused = [r for r in other.ctl("history", "--last", "200")["records"] if r["kind"] == "remote-refused"]
    assert len(refused) == 2 and all(r["key"] == "noc" and r["cmd"] == "drain" for r in refused), refused
    # This one refused the fleet copy for what it is, not merely as a replay.
    assert [r["ok"] for r in by_site[SITE]] == [True, False], by_site
    assert 'signed for site "test-gw" but sent on the fleet topic' in by_site[SITE][1]["error"]
    assert len(gwlab.ctl("status")["overrides"]) == 1  # only the legit drain

    # Revocation: the noc key's line deleted, a reload (no restart), and its next command is refused.
    keys_file.write_text("".join(k for k in keys_file.read_text().splitlines(True) if not k.startswith("noc ")))
    reload = gwlab.ctl("reload")
    assert reload["ok"] and reload["services"]["mqtt"] == "applied: 1 command keys", reload
    rc, reply = remote(gwlab, noc, "--site", SITE, "release", "--all")
    assert rc == 1 and reply["error"] == 'unknown key "noc"', reply
    rc, reply = remote(gwlab, field, "--site", SITE, "release", "--all")
    assert rc == 0 and reply["ok"], reply
