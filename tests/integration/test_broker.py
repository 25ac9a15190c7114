"""The shipped broker configuration on a real mosquitto with TLS: each gateway is confined to its own topics,
operators command and read, anonymous, plaintext and revoked clients are turned away, no client takes over
another's session by its client id, failoverctl works through it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import keys
from netlab import GatewayLab, failoverctl_in

from failoverd.broker import BrokerSpec, make_pki, operator_username, render, revoke
from lab.netns import wait_for

BROKER = "198.19.2.1"
CERT_PORT, PASSWORD_PORT, LOOPBACK_PORT = 8883, 8884, 1883
SITE = "test-gw"  # the lab's gateway, a real failoverd
OTHER = "site-b"  # another gateway, played with mosquitto_pub/sub
STOLEN = "site-c"  # a gateway whose certificate was revoked
# Operators: each connection needs a username of its own, the session is the username's.
OPERATOR, WATCHER = operator_username("noc"), operator_username("watch")


def operator_keys(tmp: Path) -> tuple[Path, Path]:
    """(the operator's private key failoverctl signs with, the gateway's keys_file of public keys)."""
    return keys.operator_keys(tmp / "command-keys", "noc")


def broker(lab: GatewayLab) -> Path:
    """mosquitto on the internet side with the rendered configuration, certificates and ACL; the PKI's
    directory (ca.pem, NAME.pem/NAME.key) is returned."""
    pki = lab.tmp / "pki"
    make_pki(pki, "broker.test", [BROKER], [SITE, OTHER, STOLEN], operators=["noc", "watch"], days=2)
    revoke(pki, [STOLEN])
    spec = BrokerSpec(
        operators=("noc", "watch"),
        auth="both",
        port=CERT_PORT,
        password_port=PASSWORD_PORT,
        loopback_port=LOOPBACK_PORT,
        bind=BROKER,
        etc=str(pki),
        crlfile=str(pki / "crl.pem"),
    )
    conf, _ = render(spec, pki)
    # The test's tmp is root's alone; mosquitto would drop to its own user and fail to read the files.
    conf.write_text(conf.read_text() + "\nuser root\npersistence false\n")
    passwords = pki / "failoverd.passwd"  # per-gateway passwords, for the password listener
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), SITE, f"pw-{SITE}"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), OTHER, f"pw-{OTHER}"], check=True)
    lab.topo.addr("inet", "lo", f"{BROKER}/32")
    lab.topo.spawn("inet", ["mosquitto", "-c", str(conf)], log=lab.tmp / "mosquitto.log")

    def listening() -> bool:
        out = lab.topo.sh("inet", "ss", "-ltn").stdout
        return all(
            f"{a}:{p}" in out for a, p in ((BROKER, CERT_PORT), (BROKER, PASSWORD_PORT), ("127.0.0.1", LOOPBACK_PORT))
        )

    wait_for(listening, 10, what="mosquitto")
    return pki


def as_cert(pki: Path, name: str, port: int = CERT_PORT) -> list[str]:
    """mosquitto_pub/sub options: over TLS to the broker, with `name`'s client certificate."""
    tls = ["-h", BROKER, "-p", str(port), "--cafile", str(pki / "ca.pem")]
    return [*tls, "--cert", str(pki / f"{name}.pem"), "--key", str(pki / f"{name}.key")]


def as_password(pki: Path, name: str, password: str | None = None) -> list[str]:
    tls = ["-h", BROKER, "-p", str(PASSWORD_PORT), "--cafile", str(pki / "ca.pem")]
    return [*tls, "-u", name, "-P", password or f"pw-{name}"]


def pub(lab: GatewayLab, creds: list[str], topic: str, payload: str, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = ["mosquitto_pub", *creds, "-q", "1", "-t", topic, "-m", payload, *extra]
    return lab.topo.sh("inet", *cmd, check=False, timeout=10)


def watch(lab: GatewayLab, creds: list[str], name: str, *topics: str) -> tuple[Path, subprocess.Popen[bytes]]:
    """A subscriber writing `topic payload` lines to a file, until the lab ends or it is stopped."""
    out = lab.tmp / f"sub-{name}.txt"
    t = [x for topic in topics for x in ("-t", topic)]
    return out, lab.topo.spawn("inet", ["mosquitto_sub", *creds, "-q", "1", "-v", *t], log=out)


def seen(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_acl_confines_each_gateway_and_failoverctl_works_over_tls(gwlab: GatewayLab) -> None:
    pki = broker(gwlab)
    p = "failoverd"

    # -- who may connect: certificates on 8883, passwords on 8884, never anonymous or plaintext ----
    refused = {
        "no client certificate": pub(gwlab, ["-h", BROKER, "-p", "8883", "--cafile", str(pki / "ca.pem")], "x", "1"),
        "anonymous": pub(gwlab, ["-h", BROKER, "-p", str(PASSWORD_PORT), "--cafile", str(pki / "ca.pem")], "x", "1"),
        "wrong password": pub(gwlab, as_password(pki, OTHER, "guess"), "x", "1"),
        "revoked certificate": pub(gwlab, as_cert(pki, STOLEN), f"{p}/{STOLEN}/status", "1"),
        "plaintext to TLS": pub(gwlab, ["-h", BROKER, "-p", str(CERT_PORT)], "x", "1"),
        "no plaintext port": pub(gwlab, ["-h", BROKER, "-p", "1883"], "x", "1"),
        "loopback anonymous": pub(gwlab, ["-h", "127.0.0.1", "-p", str(LOOPBACK_PORT)], "x", "1"),
        "loopback as operator": pub(gwlab, ["-h", "127.0.0.1", "-p", str(LOOPBACK_PORT), "-u", OPERATOR], "x", "1"),
    }
    assert {why: r.returncode for why, r in refused.items() if r.returncode == 0} == {}

    # -- what a gateway may do: an operator sees everything that reaches the broker ---------------
    # One connection per username: the broker makes the username the client id, so a second client
    # of the same name would take the first one's place.
    everything, _ = watch(gwlab, as_cert(pki, WATCHER), "operator", f"{p}/#")
    sync = 0

    def synced(*watchers: Path) -> None:
        """A command the operator sends to A: when the subscribers have it, all sent before has arrived.
        Sent again until then: the subscribers may still be subscribing."""
        nonlocal sync
        sync += 1
        mark = f"sync-{sync}"

        def arrived() -> bool:
            if all(mark in seen(w) for w in watchers):
                return True
            assert pub(gwlab, as_cert(pki, OPERATOR), f"{p}/{SITE}/cmd", mark).returncode == 0
            return False

        wait_for(arrived, 10, 0.3, what=mark)

    synced(everything)
    # A, with its certificate or its password, publishes on B's and the fleet's topics: dropped.
    forged = [f"{p}/{OTHER}/{t}" for t in ("status", "events", "reply", "cmd")] + [f"{p}/fleet/cmd", "elsewhere"]
    for creds in (as_cert(pki, SITE), as_password(pki, SITE)):
        for i, topic in enumerate(forged):
            pub(gwlab, creds, topic, f"forged-{i}")
    # A publishes its own status, events and reply, retained: delivered (and kept for later subscribers).
    own = [f"{p}/{SITE}/status", f"{p}/{SITE}/events", f"{p}/{SITE}/reply"]
    for i, topic in enumerate(own):
        assert pub(gwlab, as_cert(pki, SITE), topic, f"own-{i}", "-r").returncode == 0
    pub(gwlab, as_password(pki, SITE), own[1], "own-password")
    # Gateway A (SITE) subscribes to its own topics, another site's reply and status, and all.
    topics = (f"{p}/{SITE}/cmd", f"{p}/fleet/cmd", f"{p}/{OTHER}/reply", "#")
    mine, as_a = watch(gwlab, as_cert(pki, SITE), "site-a", *topics)
    synced(everything, mine)
    # B replies; B's status; an operator's fleet command.
    assert pub(gwlab, as_cert(pki, OTHER), f"{p}/{OTHER}/reply", "reply-of-b").returncode == 0
    assert pub(gwlab, as_password(pki, OTHER), f"{p}/{OTHER}/status", "status-of-b").returncode == 0
    assert pub(gwlab, as_cert(pki, OPERATOR), f"{p}/fleet/cmd", "fleet-command").returncode == 0
    assert pub(gwlab, as_cert(pki, OPERATOR), f"{p}/{OTHER}/cmd", "command-for-b").returncode == 0
    # An operator cannot pose as a gateway either: it writes commands only.
    pub(gwlab, as_cert(pki, OPERATOR), f"{p}/{OTHER}/status", "operator-forged")
    synced(everything, mine)

    broker_saw = seen(everything)
    assert "forged-" not in broker_saw and "operator-forged" not in broker_saw, broker_saw
    for i, topic in enumerate(own):
        assert f"{topic} own-{i}" in broker_saw
    assert f"{p}/{SITE}/events own-password" in broker_saw
    assert f"{p}/{OTHER}/reply reply-of-b" in broker_saw and f"{p}/fleet/cmd fleet-command" in broker_saw
    a_saw = seen(mine)
    assert f"{p}/fleet/cmd fleet-command" in a_saw  # its fleet commands
    assert f"{p}/{OTHER}/cmd command-for-b" in broker_saw
    assert "reply-of-b" not in a_saw and "status-of-b" not in a_saw, a_saw  # nothing of B's
    assert "command-for-b" not in a_saw, a_saw  # not even the commands sent to B
    assert "own-" not in a_saw  # not even its own retained status: gateways write, operators read
    gwlab.topo.stop(as_a)  # SITE's session is the real gateway's from now on

    # -- failoverctl through the broker, to a real failoverd with its own certificate --------------
    sign_with, gateway_keys = operator_keys(gwlab.tmp)
    mqtt = (
        f"  mqtt: {{enabled: true, host: {BROKER}, port: {CERT_PORT}, tls: true, ca_file: {pki / 'ca.pem'},\n"
        f"         cert_file: {pki / (SITE + '.pem')}, cert_key_file: {pki / (SITE + '.key')},\n"
        f"         keys_file: {gateway_keys}, keepalive: 2s}}\n"
    )
    gwlab.policy_path.write_text(gwlab.policy_path.read_text().replace("control:\n", "control:\n" + mqtt, 1))
    gwlab.start()
    gwlab.wait_class("critical", "fiber")
    wait_for(lambda: f'{p}/{SITE}/status {{"online": true' in seen(everything), 15, what="the gateway online")

    # -- another gateway claims this one's client id (failoverd-<site>): it gets a session of its own ----
    for creds in (as_cert(pki, OTHER), as_password(pki, OTHER)):
        r = gwlab.topo.sh(
            "inet", "mosquitto_sub", *creds, "-i", f"failoverd-{SITE}", "-t", f"{p}/{OTHER}/cmd", "-W", "2",
            check=False, timeout=10,
        )  # fmt: skip
        assert r.returncode in (0, 27), r  # 27: -W's timeout, i.e. it stayed connected
    broker_log = (gwlab.tmp / "mosquitto.log").read_text()
    assert "already connected" not in broker_log, broker_log[-2000:]
    assert f'{p}/{SITE}/status {{"online": false' not in seen(everything)
    assert gwlab.log.read_text().count("mqtt-connected") == 1  # the gateway never lost its session

    rc, reply = failoverctl(
        gwlab, pki, OPERATOR, sign_with, "--site", SITE, "failover", "critical", "--to", "mobile", "--reason", "drill"
    )
    assert rc == 0 and reply["ok"] and reply["site"] == SITE, reply
    assert gwlab.cls("critical") == "mobile"
    rc, reply = failoverctl(gwlab, pki, OPERATOR, sign_with, "--fleet", "status", "--live")
    assert rc == 0 and [r["site"] for r in reply] == [SITE], reply
    # The fleet's view from retained statuses: the ACL lets the operator use its end-of-burst marker.
    # (B's status above was not retained, and STOLEN never got one in.)
    rc, view = failoverctl(gwlab, pki, OPERATOR, sign_with, "--fleet", "status")
    assert rc == 0 and view["complete"], view
    conditions = {s["site"]: s["conditions"] for s in view["sites"]}
    assert set(conditions) == {SITE} and {"online", "backup"} <= set(conditions[SITE]), conditions
    # The operator's signing key on B's certificate: the broker drops the command, no gateway answers.
    rc, reply = failoverctl(gwlab, pki, OTHER, sign_with, "--site", SITE, "release", "--all", wait="2")
    assert rc == 3 and "no reply" in reply, reply
    assert gwlab.cls("critical") == "mobile"
    log = gwlab.log.read_text()
    assert "mqtt-connected" in log and "mqtt-setup" not in log


def failoverctl(lab: GatewayLab, pki: Path, who: str, key_file: Path, *args: str, wait: str = "5") -> tuple[int, Any]:
    """The documented remote call: `failoverctl --mqtt HOST:PORT --tls --ca-file ... --cert-file ...`."""
    tls = ["--mqtt", f"{BROKER}:{CERT_PORT}", "--tls", "--ca-file", str(pki / "ca.pem")]
    tls += ["--cert-file", str(pki / f"{who}.pem"), "--cert-key-file", str(pki / f"{who}.key")]
    return failoverctl_in(lab.topo, "inet", *tls, "--key-file", str(key_file), "--wait", wait, *args)
