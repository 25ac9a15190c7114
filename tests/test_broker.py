"""The fleet broker's configuration: the shipped files are the renderer's, names are checked, TLS options fit."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest

from failoverd.broker import BrokerConfigError, BrokerSpec, make_pki, render_acl, render_conf
from failoverd.cli import tls_warnings
from failoverd.control.tls import client_context
from failoverd.ctl import build_parser, transport_problem
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
    assert rules[5:] == [
        *("user noc", "topic read fleet-a/#", "topic write fleet-a/+/cmd"),
        *("user alice", "topic read fleet-a/#", "topic write fleet-a/+/cmd"),
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


@pytest.mark.parametrize(
    ("kwargs", "fault"),
    [
        ({"operators": ("no/c",)}, "operator"),
        ({"operators": ("#",)}, "operator"),
        ({"operators": ()}, "at least one"),
        ({"operators": ("fleet",)}, "fleet"),
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
        (["--cert-file", "c.pem"], "--cert-file only work over TLS"),
        (["--ca-file", "ca.pem"], "--ca-file only work over TLS"),
        (["--tls", "--cert-key-file", "k"], "give --cert-file"),
        (["--password-file", "p"], "needs --username"),
        (["--tls", "--ca-file", "ca.pem", "--cert-file", "c.pem", "--cert-key-file", "k"], ""),
    ],
)
def test_failoverctl_transport_options_must_fit(argv: list[str], fault: str) -> None:
    args = build_parser().parse_args(["--mqtt", "b", "--site", "s", *argv, "status"])
    assert transport_problem(args) == fault if not fault else fault in transport_problem(args)


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
