"""A fleet as an operations centre sees it, on real mosquitto: `failoverctl --fleet status` over retained
statuses (simulated sites and a real gateway), and a bridged hierarchy (regional brokers under a central one)
carrying signed commands down and statuses, replies and last wills up, with each gateway still confined."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import keys
from netlab import PY, ROOT, GatewayLab, failoverctl_in, peer

from failoverd.broker import (
    BridgeSpec,
    BrokerSpec,
    bridge_username,
    make_pki,
    operator_username,
    render_acl,
    render_bridge,
    render_conf,
)
from lab.netns import wait_for

SITE = "test-gw"  # the lab's gateway, a real failoverd
BROKER = "198.19.2.1"  # also the central broker of the hierarchy
EAST, WEST = "198.19.2.2", "198.19.2.3"  # regional brokers
PORT = 8883


def plain_broker(lab: GatewayLab) -> None:
    lab.topo.addr("inet", "lo", f"{BROKER}/32")
    conf = lab.tmp / "mosquitto.conf"
    conf.write_text(f"listener 1883 {BROKER}\nallow_anonymous true\npersistence false\nmax_queued_messages 20000\n")
    lab.topo.spawn("inet", ["mosquitto", "-c", str(conf)], log=lab.tmp / "mosquitto.log")
    wait_for(lambda: f"{BROKER}:1883" in lab.topo.sh("inet", "ss", "-ltn").stdout, 10, what="mosquitto")


def simulated(site: str, n: int, now: float) -> dict[str, Any]:
    """The retained status of a simulated site: every fifth on backup, every seventh on the satellite,
    every eleventh with an insane clock, every thirteenth offline, every seventeenth stale."""
    if n % 13 == 0:
        return {"online": False, "site": site, "at": now, "why": "connection lost"}
    via = "sat" if n % 7 == 0 else "mobile" if n % 5 == 0 else "fiber"
    return {
        "online": True,
        "site": site,
        "at": now - (900 if n % 17 == 0 else 5),
        "clock": "insane" if n % 11 == 0 else "sane",
        "classes": {"dispatch": f"via {via}", "bulk": "via fiber" if via == "fiber" else "blackhole"},
        "primary": {"dispatch": "fiber", "bulk": "fiber"},
        "kinds": {"fiber": "wired", "mobile": "cellular", "sat": "satellite"},
        "uplinks": {"fiber": "UP" if via == "fiber" else "DOWN", "mobile": "UP", "sat": "UP"},
        "alarms": {},
    }


def fleet_status(lab: GatewayLab, *args: str) -> dict[str, Any]:
    rc, view = failoverctl_in(lab.topo, "inet", "--mqtt", BROKER, "--fleet", "status", *args)
    assert rc == 0, view
    assert isinstance(view, dict) and view["complete"], view
    return view


def test_fleet_status_summarises_and_filters_retained_statuses(gwlab: GatewayLab) -> None:
    plain_broker(gwlab)
    noc_key, keys_file = keys.operator_keys(gwlab.tmp / "operators", "noc")
    mqtt = f"  mqtt: {{enabled: true, host: {BROKER}, keys_file: {keys_file}, keepalive: 2s}}\n"
    gwlab.policy_path.write_text(gwlab.policy_path.read_text().replace("control:\n", "control:\n" + mqtt, 1))
    now = time.time()
    sims = {f"sim-{n:02d}": simulated(f"sim-{n:02d}", n, now) for n in range(1, 41)}
    for site, doc in sims.items():
        topic = f"failoverd/{site}/status"
        gwlab.topo.sh("inet", "mosquitto_pub", "-h", BROKER, "-q", "1", "-r", "-t", topic, "-m", json.dumps(doc))
    gwlab.start()
    gwlab.wait_class("critical", "fiber")
    wait_for(lambda: SITE in {s["site"] for s in fleet_status(gwlab, "--where", "state=online")["sites"]}, 10)

    ns = range(1, 41)
    offline = [n for n in ns if n % 13 == 0]
    stale = [n for n in ns if n % 17 == 0 and n not in offline]
    live = [n for n in ns if n not in offline and n not in stale]
    view = fleet_status(gwlab)
    real = next(s for s in view["sites"] if s["site"] == SITE)
    assert "online" in real["conditions"] and "backup" not in real["conditions"], real
    assert real["status"]["primary"]["critical"] == "fiber" and real["status"]["kinds"]["sat"] == "satellite"
    expected = {
        "sites": 40,
        "online": len(live),
        "offline": len(offline),
        "stale": len(stale),
        "backup": len([n for n in live if n % 5 == 0 or n % 7 == 0]),
        "satellite": len([n for n in live if n % 7 == 0]),
        "no-route": len([n for n in live if n % 5 == 0 or n % 7 == 0]),
        "bad-clock": len([n for n in live if n % 11 == 0]),
        "unreadable": 0,
    }
    for key in ["sites", *real["conditions"]]:  # and the real gateway, whatever its clock says
        expected[key] += 1
    assert view["summary"] == expected, view["summary"]

    on_sat = fleet_status(gwlab, "--where", "class=dispatch,uplink=sat")
    assert [s["site"] for s in on_sat["sites"]] == [f"sim-{n:02d}" for n in live if n % 7 == 0]
    assert on_sat["matched"]["sites"] == len(on_sat["sites"]) and on_sat["summary"]["sites"] == 41
    assert fleet_status(gwlab, "--where", "clock=bad,site=sim-1*")["matched"]["sites"] == 1  # sim-11
    assert "sites" not in fleet_status(gwlab, "--summary")

    ctl_in_inet = ["ip", "netns", "exec", gwlab.topo.ns("inet"), PY, "-m", "failoverd.ctl", "--mqtt", BROKER]
    # A fleet command waits for the sites whose status said online, and names those that did not answer
    # (the simulated ones: a retained status and nothing behind it); offline and stale ones are counted.
    r = subprocess.run(
        [*ctl_in_inet, "--key-file", str(noc_key), "--wait", "3", "--fleet", "release", "--all"],
        capture_output=True, text=True, cwd=ROOT, timeout=30, check=False,
    )  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith(f"{SITE}: "), r.stdout
    silent = ", ".join(f"sim-{n:02d}" for n in live[:20])
    assert f"{len(offline) + len(stale)} sites offline, stale or unreadable when sent: not waited for" in r.stderr, (
        r.stderr
    )
    assert f"no reply from {len(live)} sites within 3s: {silent} and {len(live) - 20} more" in r.stderr, r.stderr

    # The real gateway moved off its primary: on backup. Killed: its last will makes it offline.
    gwlab.ctl("failover", "critical", "--to", "mobile", "--reason", "drill")
    wait_for(
        lambda: [s["site"] for s in fleet_status(gwlab, "--where", "state=backup,site=test-*")["sites"]] == [SITE], 10
    )
    gwlab.kill(signal.SIGKILL)
    wait_for(
        lambda: [s["site"] for s in fleet_status(gwlab, "--where", "state=offline,site=test-*")["sites"]] == [SITE], 10
    )

    # The text view: a summary line, then a line per matching site.
    ctl = ["ip", "netns", "exec", gwlab.topo.ns("inet"), PY, "-m", "failoverd.ctl", "--mqtt", BROKER]
    r = subprocess.run(
        [*ctl, "--fleet", "status", "--where", "state=offline"],
        capture_output=True, text=True, cwd=ROOT, timeout=30, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("41 sites: ") and "connection lost" in r.stdout, r.stdout


# -- a bridged hierarchy -------------------------------------------------------------------------------
OTHER = "other-gw"  # a second real gateway, on the west regional broker
INTRUDER = "site-c"  # a gateway's credentials on the east broker, played with mosquitto_pub
OPERATOR, WATCHER = operator_username("noc"), operator_username("watch")


def hierarchy(lab: GatewayLab) -> Path:
    """A central broker and two regional ones (east, west) bridged to it, all with TLS, client
    certificates and the rendered ACL; the PKI's directory is returned."""
    pki = lab.tmp / "pki"
    make_pki(
        pki, "broker.test", [BROKER, EAST, WEST], [SITE, OTHER, INTRUDER],
        operators=["noc", "watch"], bridges=["east", "west"], days=2,
    )  # fmt: skip
    spec = BrokerSpec(operators=("noc", "watch"), bridges=("east", "west"), etc=str(pki))
    (pki / "failoverd.acl").write_text(render_acl(spec))  # one ACL for the three brokers
    for name, address in (("central", BROKER), ("east", EAST), ("west", WEST)):
        conf = render_conf(BrokerSpec(operators=spec.operators, bind=address, etc=str(pki)))
        conf += "\nuser root\npersistence false\n"  # the test's files are root's alone
        if name != "central":
            conf += render_bridge(BridgeSpec(name=name, central=f"{BROKER}:{PORT}", etc=str(pki)))
        (pki / f"{name}.conf").write_text(conf)
        lab.topo.addr("inet", "lo", f"{address}/32")
        lab.topo.spawn("inet", ["mosquitto", "-c", str(pki / f"{name}.conf")], log=lab.tmp / f"mosquitto-{name}.log")
        # The central broker first: a bridge that finds it closed waits restart_timeout to try again.
        wait_for(lambda a=address: f"{a}:{PORT}" in lab.topo.sh("inet", "ss", "-ltn").stdout, 10, what=name)

    def bridged() -> bool:
        central = (lab.tmp / "mosquitto-central.log").read_text()
        return all(f" as {bridge_username(n)} (" in central for n in ("east", "west"))

    wait_for(bridged, 10, what="both bridges connected")
    return pki


def tls(pki: Path, who: str, address: str = BROKER) -> list[str]:
    return [
        "-h", address, "-p", str(PORT), "--cafile", str(pki / "ca.pem"),
        "--cert", str(pki / f"{who}.pem"), "--key", str(pki / f"{who}.key"),
    ]  # fmt: skip


def operator(lab: GatewayLab, pki: Path, key: Path, *args: str) -> tuple[int, Any]:
    """failoverctl on the central broker, as the operations centre runs it."""
    where = ["--mqtt", f"{BROKER}:{PORT}", "--tls", "--ca-file", str(pki / "ca.pem")]
    where += ["--cert-file", str(pki / f"{OPERATOR}.pem"), "--cert-key-file", str(pki / f"{OPERATOR}.key")]
    return failoverctl_in(lab.topo, "inet", *where, "--key-file", str(key), *args)


def gateway_mqtt(pki: Path, site: str, broker: str, keys_file: Path) -> str:
    return (
        f"  mqtt: {{enabled: true, host: {broker}, port: {PORT}, tls: true, ca_file: {pki / 'ca.pem'},\n"
        f"         cert_file: {pki / (site + '.pem')}, cert_key_file: {pki / (site + '.key')},\n"
        f"         keys_file: {keys_file}, keepalive: 2s}}\n"
    )


def test_a_bridged_hierarchy_carries_commands_down_and_statuses_up(gwlab: GatewayLab) -> None:
    pki = hierarchy(gwlab)
    key, keys_file = keys.operator_keys(gwlab.tmp / "command-keys", "noc")
    other = peer(gwlab, OTHER)
    for policy, site, broker in ((gwlab.policy_path, SITE, EAST), (other.policy_path, OTHER, WEST)):
        mqtt = gateway_mqtt(pki, site, broker, keys_file)
        policy.write_text(policy.read_text().replace("control:\n", "control:\n" + mqtt, 1))
    everything = gwlab.tmp / "central.txt"  # what reaches the central broker
    gwlab.topo.spawn(
        "inet", ["mosquitto_sub", *tls(pki, WATCHER), "-q", "1", "-v", "-t", "failoverd/#"], log=everything
    )
    gwlab.start()
    other.start()

    # Both gateways' retained statuses are visible on the central broker.
    def central_view(*args: str) -> dict[str, Any]:
        rc, view = operator(gwlab, pki, key, "--fleet", "status", *args)
        assert rc == 0 and view["complete"], view
        return view

    wait_for(lambda: central_view("--where", "state=online")["summary"]["online"] == 2, 15, 0.3, "both online")

    # A signed fleet command from the centre: executed by both, both replies back.
    rc, replies = operator(gwlab, pki, key, "--fleet", "drain", "mobile", "--reason", "carrier outage", "--for", "10m")
    assert rc == 0 and sorted(r["site"] for r in replies) == [OTHER, SITE], replies
    for gw in (gwlab, other):
        assert [o["uplink"] for o in gw.ctl("status")["overrides"]] == ["mobile"]
    # A site command: the west gateway alone acts.
    rc, reply = operator(gwlab, pki, key, "--site", OTHER, "release", "--all")
    assert rc == 0 and reply["ok"] and reply["site"] == OTHER, reply
    assert other.ctl("status")["overrides"] == [] and len(gwlab.ctl("status")["overrides"]) == 1

    # The east broker confines a gateway: another site's topics and the fleet's commands go nowhere.
    east = tls(pki, INTRUDER, EAST)
    p = "failoverd"
    for i, topic in enumerate([f"{p}/{OTHER}/status", f"{p}/{SITE}/reply", f"{p}/{OTHER}/cmd", f"{p}/fleet/cmd"]):
        gwlab.topo.sh("inet", "mosquitto_pub", *east, "-q", "1", "-t", topic, "-m", f"forged-{i}", check=False)
    gwlab.topo.sh("inet", "mosquitto_pub", *east, "-q", "1", "-t", f"{p}/{INTRUDER}/events", "-m", "own-events")
    wait_for(lambda: f"{p}/{INTRUDER}/events own-events" in everything.read_text(), 10, what="own events")
    assert "forged-" not in everything.read_text()
    for gw in (gwlab, other):  # not even a refusal: no forged command reached a gateway
        assert not [r for r in gw.ctl("history", "--last", "500")["records"] if r["kind"] == "remote-refused"]

    # A gateway that vanishes: the west broker's last will reaches the centre.
    assert other.daemon is not None
    gwlab.topo.stop(other.daemon, signal.SIGKILL)
    wait_for(
        lambda: [s["site"] for s in central_view("--where", "state=offline")["sites"]] == [OTHER], 10, 0.3, "last will"
    )
    assert (
        f'{p}/{OTHER}/status {{"online": false, "site": "{OTHER}", "why": "connection lost"}}' in everything.read_text()
    )
