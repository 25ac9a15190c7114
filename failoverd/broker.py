"""A fleet broker's mosquitto configuration and ACL, rendered; and a throw-away PKI made with openssl.

`python -m failoverd.broker render --prefix failoverd --operators noc,alice --out DIR` writes
`DIR/failoverd.conf` and `DIR/failoverd.acl` (`--bridges east,west` on a central broker lets those regional
brokers' bridges in); `python -m failoverd.broker bridge --name east --central HOST:8883 --out DIR` writes a
regional broker's `DIR/failoverd-bridge.conf`; `python -m failoverd.broker pki --out DIR --server
broker.example --server-ip 192.0.2.10 --clients site-a,site-b --operators noc` writes a CA, the
broker's certificate and one client certificate per gateway and operator; `revoke` writes a CRL.
mosquitto/README.md explains them.

Theory of operation: a gateway's MQTT username *is* its site name (its certificate's CN under
`use_identity_as_username`, or its line in the password file), so one set of `pattern` lines with
`%u` confines every gateway to its own topics without listing the gateways. Operators are the only
named users: they read the whole prefix and write commands. An operator's username is `op/NAME`:
a site that uses MQTT cannot contain "/" (`failoverd check` refuses it), so no gateway's
certificate or password can ever carry an operator's username. Every listener replaces the client
id with the username (`use_username_as_clientid`), so no client can take over another's session by
claiming its client id. Anything not granted is denied.
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MAX_REQUEST = 64 * 1024  # failoverd.control.mqtt.MAX_REQUEST (not imported: that module needs aiomqtt)
# The broker's limit is on whole packets, from every client: a command is at most MAX_REQUEST (the
# gateway refuses more), but a gateway's reply to `history --last 500` or its status with many
# uplinks may be larger, and a packet over the limit makes mosquitto drop the sender's session.
MAX_PACKET = 4 * MAX_REQUEST
AUTH_MODES = ("certificate", "password", "both")
# Operators' usernames: "/" cannot appear in a site name that uses MQTT (policy/verify.py), so no
# gateway can be issued an operator's name; their files live in a directory of the same name.
OPERATOR_PREFIX = "op/"
BRIDGE_PREFIX = "br/"  # regional brokers' bridges, on the central broker: "/" keeps them apart from sites too
# A name that can be an MQTT username and one topic level: no wildcards, no separators, no spaces.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class BrokerConfigError(ValueError):
    """A name or option the broker configuration cannot carry."""


@dataclass(frozen=True, slots=True)
class BrokerSpec:
    prefix: str = "failoverd"
    operators: tuple[str, ...] = ("noc",)
    auth: str = "certificate"  # "certificate", "password" or "both"
    port: int = 8883  # TLS: client certificates (or passwords when auth is "password")
    password_port: int = 8884  # TLS with passwords, when auth is "both"
    bind: str | None = None  # listen on this address only (default: all)
    loopback_port: int | None = None  # a plaintext listener on 127.0.0.1 for local tools (password auth)
    etc: str = "/etc/mosquitto/failoverd"  # where the broker finds the files named below
    crlfile: str | None = None  # revoked client certificates (PEM CRL), on the certificate listener
    bridges: tuple[str, ...] = ()  # regional brokers bridged to this one (usernames br/NAME)
    # Messages queued per client: a `--fleet status` subscription gets every site's retained status at
    # once, and mosquitto's default (1000) would drop the rest of a larger fleet's burst.
    max_queued: int = 20000

    def __post_init__(self) -> None:
        if self.auth not in AUTH_MODES:
            raise BrokerConfigError(f"auth must be one of {', '.join(AUTH_MODES)}, not {self.auth!r}")
        levels = self.prefix.strip("/").split("/")
        if not all(NAME.match(level) for level in levels):
            raise BrokerConfigError(f"prefix {self.prefix!r}: levels of letters, digits, . _ - only")
        if not self.operators:
            raise BrokerConfigError("name at least one operator")
        for name in self.operators:
            operator_username(name)
        for name in self.bridges:
            bridge_username(name)
        if self.loopback_port is not None and self.auth == "certificate":
            # Without a password file mosquitto would have nothing to check a plaintext client against.
            raise BrokerConfigError("a loopback listener authenticates with passwords: use --auth password or both")
        if self.crlfile is not None and self.auth == "password":
            raise BrokerConfigError("a CRL revokes client certificates: use --auth certificate or both")


@dataclass(frozen=True, slots=True)
class BridgeSpec:
    """A regional broker's bridge to the central one."""

    name: str  # the region: the bridge's username on the central broker is br/NAME
    central: str  # HOST:PORT of the central broker's certificate listener
    prefix: str = "failoverd"
    etc: str = "/etc/mosquitto/failoverd"  # ca.pem and br/NAME.pem/.key, as `pki --bridges` writes them
    restart_timeout: int = 5  # s before reconnecting to the central broker
    keepalive: int = 30  # s

    def __post_init__(self) -> None:
        bridge_username(self.name)
        host, colon, port = self.central.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise BrokerConfigError(f"central {self.central!r}: write HOST:PORT")


def bridge_username(name: str) -> str:
    """`br/NAME`, the username (certificate CN) of regional broker NAME's bridge; like an operator's, no
    site can be named so."""
    if not NAME.match(name):
        raise BrokerConfigError(f"bridge {name!r}: letters, digits, . _ - only")
    return BRIDGE_PREFIX + name


def operator_username(name: str) -> str:
    """`op/NAME`, the username (certificate CN, password file entry) of operator NAME."""
    if not NAME.match(name):
        hint = f" (name it without {OPERATOR_PREFIX!r}: it is added)" if name.startswith(OPERATOR_PREFIX) else ""
        raise BrokerConfigError(f"operator {name!r}: letters, digits, . _ - only{hint}")
    return OPERATOR_PREFIX + name


def render_acl(spec: BrokerSpec) -> str:
    p = spec.prefix.strip("/")
    lines = [
        "# failoverd fleet ACL, from `python -m failoverd.broker render`; see mosquitto/README.md.",
        "# Not granted is denied. The username is the site name (certificate CN or password file).",
        "",
        "# Every gateway: publishes its own status, events and replies; reads its own and the fleet's commands.",
        f"pattern write {p}/%u/status",
        f"pattern write {p}/%u/events",
        f"pattern write {p}/%u/reply",
        f"pattern read {p}/%u/cmd",
        f"pattern read {p}/fleet/cmd",
        "",
        "# Operators (op/NAME, never a site's name): send commands to one site or the fleet, read everything.",
    ]
    for name in spec.operators:
        lines += [
            f"user {operator_username(name)}",
            f"topic read {p}/#",
            f"topic write {p}/+/cmd",
            # failoverctl's end-of-burst marker (`--fleet status`); no site is named fleet.
            f"topic write {p}/fleet/sync/#",
            "",
        ]
    if spec.bridges:
        lines += [
            "# Regional brokers' bridges (br/NAME): carry gateways' status, events and replies in, commands out.",
            "# A bridge writes for every site: each regional broker confines its own gateways.",
        ]
    for name in spec.bridges:
        lines += [f"user {bridge_username(name)}"]
        lines += [f"topic write {p}/+/{t}" for t in ("status", "events", "reply")]
        lines += [f"topic read {p}/+/cmd", ""]
    return "\n".join(lines)


def render_bridge(bridge: BridgeSpec) -> str:
    """The `connection` section a regional broker adds to its configuration to bridge to the central one."""
    p = bridge.prefix.strip("/")
    etc = bridge.etc.rstrip("/")
    user = bridge_username(bridge.name)
    return "\n".join(
        [
            f"# failoverd: this regional broker bridged to the central one, as {user}; see mosquitto/README.md.",
            "# Gateways' status (retained: the retain flag crosses the bridge), events and replies go up; operators'",
            "# commands come down. Each gateway is confined by this broker's ACL before anything crosses.",
            f"connection failoverd-{bridge.name}",
            f"address {bridge.central}",
            "bridge_protocol_version mqttv311",
            "try_private true",
            "cleansession false",
            # No $SYS notifications: the central ACL does not grant them, and a stale status says more.
            "notifications false",
            "start_type automatic",
            f"restart_timeout {bridge.restart_timeout}",
            f"keepalive_interval {bridge.keepalive}",
            f"bridge_cafile {etc}/ca.pem",
            f"bridge_certfile {etc}/{user}.pem",
            f"bridge_keyfile {etc}/{user}.key",
            "bridge_insecure false",
            f"topic {p}/+/status out 1",
            f"topic {p}/+/events out 1",
            f"topic {p}/+/reply out 1",
            f"topic {p}/+/cmd in 1",
            "",
        ]
    )


def render_conf(spec: BrokerSpec) -> str:
    etc = spec.etc.rstrip("/")
    bind = f" {spec.bind}" if spec.bind else ""
    tls = [f"cafile {etc}/ca.pem", f"certfile {etc}/server.pem", f"keyfile {etc}/server.key", "tls_version tlsv1.2"]
    out = [
        "# mosquitto for a failoverd fleet, from `python -m failoverd.broker render`; see mosquitto/README.md.",
        "# mosquitto 2.x. Authentication and the ACL apply to every listener.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {etc}/failoverd.acl",
    ]
    if spec.auth != "certificate":
        out.append(f"password_file {etc}/failoverd.passwd")
    out += [
        f"# Commands are at most {MAX_REQUEST} bytes (the gateway refuses more); replies such as a long",
        "# history are larger. A client that sends a bigger packet is disconnected.",
        f"max_packet_size {MAX_PACKET}",
        "# `failoverctl --fleet status` receives every site's retained status at once: room for all of them.",
        f"max_queued_messages {spec.max_queued}",
        "",
    ]
    # On each listener: the session is the username's, so a client that claims another's client id
    # (`failoverd-<site>` by default) gets its own session instead of disconnecting the other.
    own_session = "use_username_as_clientid true"
    if spec.auth in ("certificate", "both"):
        out += [
            "# Client certificates: the CN is the username (a gateway's CN is its site name).",
            f"listener {spec.port}{bind}",
            *tls,
            "require_certificate true",
            "use_identity_as_username true",
            *([f"crlfile {spec.crlfile}"] if spec.crlfile else []),
            own_session,
            "",
        ]
    if spec.auth in ("password", "both"):
        port = spec.port if spec.auth == "password" else spec.password_port
        out += [
            "# Username and password over TLS (the server is verified, the client need not have a certificate).",
            f"listener {port}{bind}",
            *tls,
            "require_certificate false",
            own_session,
            "",
        ]
    if spec.loopback_port is not None:
        out += [
            "# Plaintext for tools on the broker itself only; passwords and the ACL apply here too.",
            f"listener {spec.loopback_port} 127.0.0.1",
            own_session,
            "",
        ]
    return "\n".join(out)


def render(spec: BrokerSpec, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("failoverd.conf", render_conf(spec)), ("failoverd.acl", render_acl(spec))):
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


# -- a test PKI ------------------------------------------------------------------------------------
def _openssl(*args: str) -> None:
    r = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {r.stderr.strip()}")


def _issue(out: Path, name: str, cn: str, extensions: str, days: int) -> None:
    """A P-256 key and a certificate for it, signed by out/ca.pem: out/NAME.key and out/NAME.pem
    (NAME may be op/NOC: the files go in out/op/)."""
    key, csr, pem = out / f"{name}.key", out / f"{name}.csr", out / f"{name}.pem"
    key.parent.mkdir(parents=True, exist_ok=True)
    subject = "/CN=" + cn.replace("/", "\\/")  # -subj separates RDNs with "/"
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", subject,
    )  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".ext", dir=out, delete=False) as ext:
        ext.write(extensions)
    try:
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(out / "ca.pem"), "-CAkey", str(out / "ca.key"),
            "-CAcreateserial", "-days", str(days), "-sha256", "-extfile", ext.name, "-out", str(pem),
        )  # fmt: skip
    finally:
        Path(ext.name).unlink()
        csr.unlink()
    key.chmod(0o600)


def make_pki(
    out: Path,
    server: str,
    server_ips: Sequence[str],
    clients: Sequence[str],
    *,
    operators: Sequence[str] = (),
    bridges: Sequence[str] = (),
    days: int = 825,
) -> None:
    """ca.pem/ca.key, server.pem/server.key (SAN: the server's name and addresses), SITE.pem/SITE.key
    per gateway (CN = SITE), op/NAME.pem/op/NAME.key per operator (CN = op/NAME), br/NAME.pem/.key per
    regional broker's bridge (CN = br/NAME), client
    authentication only; crl.pem, an empty CRL (see `revoke`). For tests and trials: a real fleet's
    CA key belongs offline."""
    if not (clients or operators or bridges):
        raise BrokerConfigError("name the gateways (--clients), operators (--operators) or bridges to certify")
    for name in clients:
        if not NAME.match(name) or name in ("ca", "server", "crl"):
            raise BrokerConfigError(f"client {name!r}: letters, digits, . _ - only, and not ca, server or crl")
    usernames = [operator_username(name) for name in operators] + [bridge_username(name) for name in bridges]
    out.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(out / "ca.key"), "-out", str(out / "ca.pem"), "-days", str(days), "-sha256",
        "-subj", "/CN=failoverd fleet CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    (out / "ca.key").chmod(0o600)
    san = ",".join([f"DNS:{server}", *(f"IP:{a}" for a in server_ips)])
    leaf = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    _issue(out, "server", server, f"{leaf}extendedKeyUsage=serverAuth\nsubjectAltName={san}\n", days)
    for name in [*clients, *usernames]:
        _issue(out, name, name, f"{leaf}extendedKeyUsage=clientAuth\n", days)
    revoke(out, [])


def revoke(out: Path, names: Sequence[str], days: int = 30) -> Path:
    """Write out/crl.pem, signed by out/ca.key: the certificates already in it and out/NAME.pem for
    each of `names` (a site, or op/NAME) are revoked. mosquitto reads it with `crlfile`."""
    from cryptography import x509  # noqa: PLC0415 (the renderer alone needs no cryptography)
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey  # noqa: PLC0415

    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), password=None)
    if not isinstance(ca_key, EllipticCurvePrivateKey):
        raise BrokerConfigError(f"{out / 'ca.key'}: not the P-256 key make_pki writes")
    crl_path = out / "crl.pem"
    serials = set()
    if crl_path.exists():
        serials = {r.serial_number for r in x509.load_pem_x509_crl(crl_path.read_bytes())}
    for name in names:
        pem = out / f"{name}.pem"
        if name in ("ca", "server") or not pem.exists():
            raise BrokerConfigError(f"revoke {name!r}: no client certificate {pem}")
        serials.add(x509.load_pem_x509_certificate(pem.read_bytes()).serial_number)
    now = datetime.datetime.now(datetime.UTC)
    crl = x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
    crl = crl.last_update(now).next_update(now + datetime.timedelta(days=days))
    for serial in sorted(serials):
        crl = crl.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl_path.write_bytes(crl.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return crl_path


# -- command line ----------------------------------------------------------------------------------
def _names(text: str) -> tuple[str, ...]:
    return tuple(x for x in text.split(",") if x)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m failoverd.broker", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="write failoverd.conf and failoverd.acl for mosquitto")
    r.add_argument("--prefix", default="failoverd", help="the policies' control.mqtt.topic_prefix")
    r.add_argument(
        "--operators", type=_names, default=("noc",), help="comma-separated operator names (usernames op/NAME)"
    )
    r.add_argument("--auth", choices=AUTH_MODES, default="certificate")
    r.add_argument("--port", type=int, default=8883)
    r.add_argument("--password-port", type=int, default=8884, help="with --auth both")
    r.add_argument("--bind", help="listen on this address only")
    r.add_argument("--loopback-port", type=int, help="plaintext on 127.0.0.1 (password auth only)")
    r.add_argument("--etc", default="/etc/mosquitto/failoverd", help="where the broker finds these files")
    r.add_argument("--crlfile", help="revoked client certificates (PEM CRL) for the certificate listener")
    r.add_argument("--bridges", type=_names, default=(), help="comma-separated regional brokers (usernames br/NAME)")
    r.add_argument("--max-queued", type=int, default=20000, help="messages queued per client (more than the sites)")
    r.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("bridge", help="write failoverd-bridge.conf: a regional broker's bridge to the central one")
    b.add_argument("--name", required=True, help="this region's name (its bridge's username is br/NAME)")
    b.add_argument("--central", required=True, metavar="HOST:PORT", help="the central broker's certificate listener")
    b.add_argument("--prefix", default="failoverd", help="the policies' control.mqtt.topic_prefix")
    b.add_argument("--etc", default="/etc/mosquitto/failoverd", help="where ca.pem and br/NAME.pem/.key are")
    b.add_argument("--out", type=Path, required=True)
    k = sub.add_parser("pki", help="a test CA, the broker's certificate and client certificates (openssl)")
    k.add_argument("--out", type=Path, required=True)
    k.add_argument("--server", required=True, help="the broker's DNS name (CN and SAN)")
    k.add_argument("--server-ip", action="append", default=[], help="an address of the broker (SAN); repeat")
    k.add_argument("--clients", type=_names, default=(), help="comma-separated gateways' site names")
    k.add_argument("--operators", type=_names, default=(), help="comma-separated operator names (CN op/NAME)")
    k.add_argument("--bridges", type=_names, default=(), help="comma-separated regional brokers (CN br/NAME)")
    k.add_argument("--days", type=int, default=825)
    v = sub.add_parser("revoke", help="add client certificates of a `pki` directory to its crl.pem")
    v.add_argument("--pki", type=Path, required=True, help="the directory `pki` wrote")
    v.add_argument("names", nargs="+", help="a gateway's site name, or op/NAME for an operator")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "render":
            spec = BrokerSpec(
                prefix=args.prefix,
                operators=args.operators,
                auth=args.auth,
                port=args.port,
                password_port=args.password_port,
                bind=args.bind,
                loopback_port=args.loopback_port,
                etc=args.etc,
                crlfile=args.crlfile,
                bridges=args.bridges,
                max_queued=args.max_queued,
            )
            for path in render(spec, args.out):
                print(path)
        elif args.cmd == "bridge":
            bridge = BridgeSpec(name=args.name, central=args.central, prefix=args.prefix, etc=args.etc)
            args.out.mkdir(parents=True, exist_ok=True)
            path = args.out / "failoverd-bridge.conf"
            path.write_text(render_bridge(bridge), encoding="utf-8")
            print(path)
        elif args.cmd == "pki":
            make_pki(
                args.out,
                args.server,
                args.server_ip,
                args.clients,
                operators=args.operators,
                bridges=args.bridges,
                days=args.days,
            )
            names = [*args.clients, *(operator_username(o) for o in args.operators)]
            names += [bridge_username(b) for b in args.bridges]
            print(f"{args.out}: ca.pem, server.pem/.key, crl.pem, " + ", ".join(f"{c}.pem/.key" for c in names))
        else:
            print(revoke(args.pki, args.names))
    except (BrokerConfigError, RuntimeError) as exc:
        print(f"failoverd.broker: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
