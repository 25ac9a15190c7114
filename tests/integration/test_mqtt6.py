"""Fleet control over a real mosquitto listening on an IPv6 address: status, signed commands, the session's path."""

from __future__ import annotations

import json
from typing import Any

from dualstack import FIBER6, MOBILE6, dual_stack, serve6
from keys import operator_keys
from netlab import GatewayLab, failoverctl_in

from failoverd.policy import load_policy
from lab.netns import wait_for

BROKER = "2001:db8:ff::b"
SITE = "test-gw"
STATUS = f"failoverd/{SITE}/status"


def retained(lab: GatewayLab) -> dict[str, Any]:
    """The retained status ({} if there is none yet), read over IPv6 from the internet side."""
    r = lab.topo.sh("inet", "mosquitto_sub", "-h", BROKER, "-t", STATUS, "-C", "1", "-W", "2", check=False)
    doc: dict[str, Any] = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else {}
    return doc


def session_from(lab: GatewayLab) -> set[tuple[str, int]]:
    """Where the gateway's TCP sessions to the broker start (ss, in its namespace): its address, the
    device a socket is bound to after a %, and the socket's mark (0: none)."""
    found = set()
    for line in lab.topo.sh("gw", "ss", "-Htne", "state", "established").stdout.splitlines():
        fields = line.split()  # Recv-Q Send-Q LOCAL PEER, then -e's details (fwmark:0x... when marked)
        if len(fields) >= 4 and fields[3] == f"[{BROKER}]:1883":
            mark = next((int(f.removeprefix("fwmark:"), 16) for f in fields if f.startswith("fwmark:")), 0)
            found.add((fields[2].rpartition(":")[0], mark))  # [2001:db8:1::2]%fiber0
    return found


def mark(lab: GatewayLab, uplink: str) -> int:
    return load_policy(lab.policy_path).uplinks[uplink].fwmark


def test_fleet_control_over_mqtt_to_an_ipv6_broker(gwlab: GatewayLab) -> None:
    dual_stack(gwlab)
    serve6(gwlab, BROKER)
    conf = gwlab.tmp / "mosquitto.conf"
    conf.write_text(f"listener 1883 {BROKER}\nallow_anonymous true\npersistence false\nlog_type all\n")
    gwlab.topo.spawn("inet", ["mosquitto", "-c", str(conf)], log=gwlab.tmp / "mosquitto.log")
    wait_for(lambda: f"[{BROKER}]:1883" in gwlab.topo.sh("inet", "ss", "-ltn").stdout, 10, what="mosquitto")
    noc, keys_file = operator_keys(gwlab.tmp / "operators", "noc")
    # The host as a URL would spell it, in brackets: the policy takes that too.
    mqtt = f'  mqtt: {{enabled: true, host: "[{BROKER}]", keys_file: {keys_file}, keepalive: 2s}}\n'
    gwlab.policy_path.write_text(gwlab.policy_path.read_text().replace("control:\n", "control:\n" + mqtt, 1))
    gwlab.start()
    gwlab.wait_class("critical", "fiber")

    # The retained status arrives, over the fiber's IPv6 path: the session is bound to the fiber's
    # IPv6 twin (dual_stack made the uplinks dual-stack; only fiber/v6's table routes IPv6).
    wait_for(lambda: retained(gwlab).get("classes", {}).get("critical") == "via fiber", 10, what="status via fiber")
    assert retained(gwlab)["online"] is True
    # (a session made before any uplink was judged usable moves onto the first one that is)
    wait_for(lambda: gwlab.ctl("status")["services"]["mqtt"]["via"] == "fiber/v6", 10, what="the session via fiber")
    assert gwlab.ctl("status")["services"]["mqtt"]["broker"] == f"[{BROKER}]:1883"
    # Marked for the fiber's IPv6 twin, whose table holds the IPv6 route (the IPv4 twin's has none).
    fiber6 = (f"[{FIBER6}]%fiber0", mark(gwlab, "fiber/v6"))
    wait_for(lambda: session_from(gwlab) == {fiber6}, 5, what="the session bound to fiber0, fiber/v6's mark")

    # A signed command from the operations side, failoverctl given the broker with a port in brackets.
    def remote(broker: str, *args: str) -> tuple[int, Any]:
        return failoverctl_in(gwlab.topo, "inet", "--mqtt", broker, "--key-file", str(noc), "--site", SITE, *args)

    rc, reply = remote(f"[{BROKER}]:1883", "failover", "critical", "--to", "mobile", "--reason", "drill")
    assert rc == 0 and reply["ok"] and reply["site"] == SITE, reply
    assert gwlab.cls("critical") == "mobile"
    assert gwlab.ctl("status")["overrides"][0]["by"].startswith("mqtt:noc/")
    rc, reply = remote(BROKER, "release", "--all")  # and bare, without a port
    assert rc == 0 and reply["ok"], reply
    gwlab.wait_class("critical", "fiber")

    # The fiber fails: the session moves to the mobile uplink at once, and says where traffic went.
    gwlab.carrier(False)
    gwlab.wait_class("critical", "mobile", timeout=5)
    wait_for(lambda: retained(gwlab).get("classes", {}).get("critical") == "via mobile", 10, what="status via mobile")
    mobile6 = (f"[{MOBILE6}]%mob1", mark(gwlab, "mobile/v6"))
    wait_for(lambda: session_from(gwlab) == {mobile6}, 5, what="the session bound to mob1, mobile/v6's mark")
    assert gwlab.ctl("status")["services"]["mqtt"]["via"] == "mobile/v6"
    assert "mqtt-rerouting" in gwlab.log.read_text()
    rc, reply = remote(f"[{BROKER}]", "ack", "uplink-down:fiber", "--reason", "crew dispatched")
    assert rc == 0 and reply["ok"], reply
