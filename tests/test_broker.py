"""The fleet broker's configuration: the shipped files are the renderer's, names are checked, TLS options fit."""

from __future__ import annotations

import shlex
import shutil
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from failoverd.broker import (
    BridgeSpec,
    BrokerConfigError,
    BrokerSpec,
    main,
    make_pki,
    operator_username,
    render_acl,
    render_bridge,
    render_conf,
    revoke,
)
from failoverd.cli import tls_warnings
from failoverd.control.tls import client_context
from failoverd.ctl import build_parser, transport_problem
from failoverd.errors import PolicyError
from failoverd.policy import parse_policy_text

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = BrokerSpec(auth="both")  # mosquitto/README.md: `render --auth both --out mosquitto`


def test_shipped_files_are_the_renderers() -> None:
    assert (ROOT / "mosquitto" / "failoverd.conf").read_text() == render_conf(SHIPPED)
    assert (ROOT / "mosquitto" / "failoverd.acl").read_text() == render_acl(SHIPPED)


def test_acl_confines_gateways_by_username_and_lists_operators() -> None:
    acl = render_acl(BrokerSpec(prefix="fleet-a/", operators=("noc", "alice"))).splitlines()
    rules = [line for line in acl if line and not line.startswith("#")]
    assert rules[:5] == [
        "pattern write fleet-a/%u/status",
        "pattern write fleet-a/%u/events",
        "pattern write fleet-a/%u/reply",
        "pattern read fleet-a/%u/cmd",
        "pattern read fleet-a/fleet/cmd",
    ]
    sync = "topic write fleet-a/fleet/sync/#"  # failoverctl's end-of-burst marker (--fleet status)
    assert rules[5:] == [
        *("user op/noc", "topic read fleet-a/#", "topic write fleet-a/+/cmd", sync),
        *("user op/alice", "topic read fleet-a/#", "topic write fleet-a/+/cmd", sync),
    ]
    assert not any(r.startswith("topic") and "readwrite" in r for r in rules)


def test_conf_has_no_anonymous_and_no_public_plaintext() -> None:
    conf = render_conf(BrokerSpec(auth="password", loopback_port=1883)).splitlines()
    assert "allow_anonymous false" in conf and "per_listener_settings false" in conf
    listeners = [line for line in conf if line.startswith("listener ")]
    assert listeners == ["listener 8883", "listener 1883 127.0.0.1"]
    cert = render_conf(BrokerSpec(auth="certificate")).splitlines()
    assert "require_certificate true" in cert and "use_identity_as_username true" in cert
    assert not any(line.startswith("password_file") for line in cert)


def test_every_listener_ties_the_client_id_to_the_username() -> None:
    """A client claiming another's client id gets a session of its own name, and takes over nobody's."""
    conf = render_conf(BrokerSpec(auth="both", loopback_port=1883))
    sections = conf.split("\nlistener ")[1:]
    assert [s.split()[0] for s in sections] == ["8883", "8884", "1883"]
    for section in sections:
        assert "\nuse_username_as_clientid true\n" in section, section


def test_a_crl_goes_on_the_certificate_listener(tmp_path: Path) -> None:
    conf = render_conf(BrokerSpec(auth="both", crlfile="/etc/mosquitto/failoverd/crl.pem"))
    cert, password = conf.split("\nlistener ")[1:]
    assert "\ncrlfile /etc/mosquitto/failoverd/crl.pem\n" in cert and "crlfile" not in password
    assert "crlfile" not in render_conf(BrokerSpec())
    with pytest.raises(BrokerConfigError, match="CRL"):
        BrokerSpec(auth="password", crlfile="crl.pem")
    assert main(["render", "--auth", "both", "--crlfile", "/x/crl.pem", "--out", str(tmp_path)]) == 0
    assert "\ncrlfile /x/crl.pem\n" in (tmp_path / "failoverd.conf").read_text()


def test_no_site_can_be_an_operator() -> None:
    """Operators are op/NAME; a site with MQTT on cannot contain "/", so no gateway's certificate or
    password entry (its site name) can carry an operator's username."""
    assert operator_username("noc") == "op/noc"
    acl_users = [
        line.split()[1]
        for line in render_acl(BrokerSpec(operators=("noc", "alice"))).splitlines()
        if line.startswith("user ")
    ]
    assert acl_users == ["op/noc", "op/alice"]
    for user in acl_users:
        with pytest.raises(PolicyError, match="cannot be an MQTT topic level"):
            parse_policy_text(
                f"site: {user}\nuplinks: [{{name: a, interface: eth0, next_hop: 198.18.0.1}}]\n"
                "classes: [{name: all, path: [a]}]\ncontrol: {mqtt: {enabled: true}}\n",
                "t.yaml",
            )
    with pytest.raises(BrokerConfigError, match="without 'op/'"):
        BrokerSpec(operators=("op/noc",))


@pytest.mark.parametrize(
    ("kwargs", "fault"),
    [
        ({"operators": ("no/c",)}, "operator"),
        ({"operators": ("#",)}, "operator"),
        ({"operators": ()}, "at least one"),
        ({"operators": ("op/noc",)}, "it is added"),
        ({"prefix": "a/+/b"}, "prefix"),
        ({"auth": "psk"}, "auth"),
        ({"loopback_port": 1883}, "loopback"),  # certificate auth: no password to check on plaintext
    ],
)
def test_bad_names_and_options_are_refused(kwargs: dict[str, object], fault: str) -> None:
    with pytest.raises(BrokerConfigError, match=fault):
        BrokerSpec(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argv", "fault"),
    [
        (["--cert-file", "c.pem"], "only work over TLS"),
        (["--ca-file", "ca.pem"], "only work over TLS"),
        (["--tls", "--cert-key-file", "k"], "give --cert-file"),
        (["--password-file", "p"], "needs --username"),
        (["--tls", "--ca-file", "ca.pem", "--cert-file", "c.pem", "--cert-key-file", "k"], ""),
    ],
)
def test_failoverctl_transport_options_must_fit(argv: list[str], fault: str) -> None:
    args = build_parser().parse_args(["--mqtt", "b", "--site", "s", *argv, "status"])
    assert transport_problem(args) == fault if not fault else fault in transport_problem(args)


def test_failoverctl_takes_the_broker_options_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """README's examples leave the CA and client certificate to FAILOVERD_* variables."""
    env = {
        "FAILOVERD_CA_FILE": "ca.pem",
        "FAILOVERD_CERT_FILE": "op-noc.pem",
        "FAILOVERD_CERT_KEY_FILE": "op-noc.key",
        "FAILOVERD_USERNAME": "op/noc",
        "FAILOVERD_PASSWORD_FILE": "noc.pass",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(["--mqtt", "b", "--tls", "--site", "s", "status"])
    assert (args.ca_file, args.cert_file, args.cert_key_file) == ("ca.pem", "op-noc.pem", "op-noc.key")
    assert (args.username, args.password_file) == ("op/noc", "noc.pass")
    assert transport_problem(args) == ""
    given = build_parser().parse_args(["--mqtt", "b", "--tls", "--cert-file", "mine.pem", "--site", "s", "status"])
    assert given.cert_file == "mine.pem"  # the command line wins
    plain = build_parser().parse_args(["--mqtt", "b", "--site", "s", "status"])
    assert "FAILOVERD_" in transport_problem(plain) and "--tls" in transport_problem(plain)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_pki_names_operators_op_and_revokes(tmp_path: Path) -> None:
    make_pki(tmp_path, "broker.test", [], ["site-a", "site-b"], operators=["noc"], days=2)
    noc = x509.load_pem_x509_certificate((tmp_path / "op" / "noc.pem").read_bytes())
    assert noc.subject.rfc4514_string() == r"CN=op/noc"
    assert (tmp_path / "op" / "noc.key").stat().st_mode & 0o077 == 0
    assert list(x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())) == []
    revoke(tmp_path, ["site-b"])
    revoke(tmp_path, ["op/noc"])  # the earlier revocation stays
    revoked = {r.serial_number for r in x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())}

    def serial(name: str) -> int:
        return x509.load_pem_x509_certificate((tmp_path / f"{name}.pem").read_bytes()).serial_number

    assert revoked == {serial("site-b"), serial("op/noc")} and serial("site-a") not in revoked
    with pytest.raises(BrokerConfigError, match="no client certificate"):
        revoke(tmp_path, ["server"])
    for bad in (["op/noc"], ["a/b"]):  # an operator is named with --operators, never as a gateway
        with pytest.raises(BrokerConfigError, match="client"):
            make_pki(tmp_path / "x", "broker.test", [], bad, days=2)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_pki_and_client_context(tmp_path: Path) -> None:
    make_pki(tmp_path, "broker.test", ["192.0.2.7"], ["site-a"], days=2)
    assert (tmp_path / "site-a.key").stat().st_mode & 0o077 == 0
    context = client_context(str(tmp_path / "ca.pem"), str(tmp_path / "site-a.pem"), str(tmp_path / "site-a.key"))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    with pytest.raises(ssl.SSLError, match=r"server\.pem"):  # a key that is not the certificate's
        client_context(str(tmp_path / "ca.pem"), str(tmp_path / "server.pem"), str(tmp_path / "site-a.key"))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_check_warns_when_the_tls_files_cannot_be_used(tmp_path: Path) -> None:
    make_pki(tmp_path, "broker.test", [], ["gw"], days=2)
    base = "site: gw\nuplinks: [{name: a, interface: eth0, next_hop: 192.0.2.1}]\nclasses: [{name: all, path: [a]}]\n"

    def warnings(**files: Path) -> list[str]:
        given = "".join(f", {k}: {v}" for k, v in files.items())
        text = base + f"control: {{mqtt: {{enabled: true, tls: true{given}}}}}\n"
        return tls_warnings(parse_policy_text(text, "t.yaml").control.mqtt)

    ca, pem, key = tmp_path / "ca.pem", tmp_path / "gw.pem", tmp_path / "gw.key"
    assert warnings(ca_file=ca, cert_file=pem, cert_key_file=key) == []
    assert "gw.pem" in warnings(ca_file=ca, cert_file=pem, cert_key_file=tmp_path / "server.key")[0]
    assert "No such file" in warnings(ca_file=tmp_path / "missing.pem")[0]


def documented_remote_calls(path: Path) -> list[tuple[list[str], bool]]:
    """Each `failoverctl --mqtt ...` console line of a markdown file (continuations joined), and whether
    the file exported FAILOVERD_CERT_FILE before it."""
    calls, exported, line = [], False, ""
    for raw in path.read_text().splitlines():
        line = line + " " + raw.strip() if line else raw.strip()
        if line.endswith("\\"):
            line = line[:-1]
            continue
        exported = exported or ("export" in line and "FAILOVERD_CERT_FILE=" in line)
        if line.startswith("$ failoverctl --mqtt"):
            calls.append((shlex.split(line[2:].split("#")[0])[1:], exported))
        line = ""
    return calls


@pytest.mark.parametrize("doc", ["README.md", "mosquitto/README.md"])
def test_documented_remote_calls_would_reach_the_shipped_broker(doc: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Signed with an Ed25519 private key (not the old HMAC keys file), and with a client certificate
    or password, given or exported, as the shipped broker requires."""
    for name in ("FAILOVERD_CA_FILE", "FAILOVERD_CERT_FILE", "FAILOVERD_CERT_KEY_FILE", "FAILOVERD_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    calls = documented_remote_calls(ROOT / doc)
    assert calls
    for argv, exported in calls:
        args = build_parser().parse_args(argv)
        view = args.fleet and args.cmd == "status" and not args.live  # retained statuses: nothing to sign
        assert args.tls and (view or (args.key_file and args.key_file.endswith(".key"))), argv
        assert exported or args.cert_file or args.username, argv
        assert transport_problem(args) == "", argv


def test_a_central_broker_lets_bridges_carry_status_up_and_commands_down() -> None:
    acl = render_acl(BrokerSpec(operators=("noc",), bridges=("east", "west"))).splitlines()
    east = acl[acl.index("user br/east") + 1 : acl.index("user br/west")]
    assert [r for r in east if r] == [
        "topic write failoverd/+/status",
        "topic write failoverd/+/events",
        "topic write failoverd/+/reply",
        "topic read failoverd/+/cmd",
    ]
    with pytest.raises(BrokerConfigError, match="bridge"):
        BrokerSpec(bridges=("a/b",))
    assert "max_queued_messages 20000" in render_conf(BrokerSpec())


def test_a_regional_brokers_bridge(tmp_path: Path) -> None:
    conf = render_bridge(BridgeSpec(name="east", central="central.example:8883", etc="/e")).splitlines()
    assert "connection failoverd-east" in conf and "address central.example:8883" in conf
    assert "bridge_certfile /e/br/east.pem" in conf and "bridge_insecure false" in conf
    assert [line for line in conf if line.startswith("topic ")] == [
        "topic failoverd/+/status out 1",
        "topic failoverd/+/events out 1",
        "topic failoverd/+/reply out 1",
        "topic failoverd/+/cmd in 1",
    ]
    with pytest.raises(BrokerConfigError, match="HOST:PORT"):
        BridgeSpec(name="east", central="central.example")
    argv = ["bridge", "--name", "east", "--central", "c:8883", "--etc", "/e", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert (tmp_path / "failoverd-bridge.conf").read_text() == render_bridge(BridgeSpec("east", "c:8883", etc="/e"))
