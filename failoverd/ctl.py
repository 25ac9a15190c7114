"""`failoverctl`: the operator's client for failoverd, on its local socket or, signed, over MQTT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from failoverd.control import fleetview
from failoverd.control.commands import COMMANDS, Command
from failoverd.hostport import split_hostport

if TYPE_CHECKING:
    import aiomqtt

DEFAULT_SOCKET = "/run/failoverd/control.sock"
WIDTH = 100
EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 3
SILENT_SHOWN = 20  # sites named when more did not answer a fleet command (the rest are counted)

COLOURS = {
    "UP": "32",
    "DEGRADED": "33",
    "DOWN": "31",
    "FAILED": "31",
    "ACTIVATING": "36",
    "STANDBY": "2",
    "UNKNOWN": "2",
    "critical": "31",
    "warning": "33",
}


class Client:
    def __init__(self, path: str, timeout: float = 15.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            s.connect(self.path)
            # Turned away at once (too many connections): the pipe is broken, the reason waits to be read.
            with contextlib.suppress(BrokenPipeError):
                s.sendall(json.dumps(req).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply: dict[str, Any] = json.loads(buf)
        return reply


def _paint(text: str, key: str, tty: bool) -> str:
    code = COLOURS.get(key)
    return f"\033[{code}m{text}\033[0m" if tty and code else text


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _alarm_line(alarms: list[dict[str, Any]], tty: bool) -> list[str]:
    if not alarms:
        return []
    counts = {s: sum(1 for a in alarms if a["severity"] == s) for s in ("critical", "warning", "info")}
    text = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    unacked = sum(1 for a in alarms if not a["acked"])
    worst = next(s for s in ("critical", "warning", "info") if counts[s])
    return [
        _paint(f"ALARMS {text}", {"critical": "DOWN", "warning": "DEGRADED"}.get(worst, ""), tty)
        + f" ({unacked} not acknowledged): failoverctl alarms"
    ]


def _dual_stack_lines(uplinks: list[dict[str, Any]], tty: bool) -> list[str]:
    """A dual-stack uplink is two rows above (NAME, NAME/v6: one per family, policy/compile.py); here
    it is one line per link, each family's state and, where it is not UP, why."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for u in uplinks:
        groups.setdefault(u.get("base") or u["name"], []).append(u)
    pairs = {base: rows for base, rows in groups.items() if len(rows) == 2}
    if not pairs:
        return []
    lines = ["", "DUAL-STACK"]
    bw = _width(10, pairs)
    for base, rows in pairs.items():
        parts = []
        for u in rows:
            why = "" if u["state"] == "UP" else f" ({u['cause']['code']}: {u['cause']['text']})"
            parts.append(f"IPv{u['family']} " + _paint(u["state"], u["state"], tty) + why)
        lines.append(_cut(f"{base:<{bw}} " + "  ".join(parts), WIDTH + (20 if tty else 0)))
    return lines


def _width(least: int, values: Iterable[object]) -> int:
    """A column as wide as its longest value, and at least `least` (a twin's name, `fiber-east/v6`, is long)."""
    return max([least, *(len(str(v)) for v in values)])


def render_status(st: dict[str, Any], tty: bool) -> str:
    nw = _width(10, [u["name"] for u in st["uplinks"]] + [m["uplink"] for m in st.get("modems") or []])
    iw = _width(8, [u["interface"] for u in st["uplinks"]])
    routes = [f"via {c['uplink']}" if c["route"] == "via" else c["route"] for c in st["classes"]]
    cw, rw = _width(10, [c["name"] for c in st["classes"]]), _width(18, routes)
    lines = [
        f"site {st['site']}   policy {st['policy']}   pid {st['pid']}   up {_age(st['uptime_s'])}   "
        f"clock {st['clock']['state'].upper()}",
        *_alarm_line(st.get("alarms", []), tty),
        "",
        f"{'UPLINK':<{nw}} {'IFACE':<{iw}} {'KIND':<9} {'STATE':<10} {'RTT':>8} {'LOSS':>5} {'SINCE':>6}  CAUSE",
    ]
    for u in st["uplinks"]:
        state = u["state"] + ("*" if u["suppressed"] or u["drained"] else "")
        rtt = f"{u['rtt_ms']:.1f}ms" if u["rtt_ms"] is not None else "-"
        loss = f"{u['loss_percent']:.0f}%" if u["loss_percent"] is not None else "-"
        cause = f"{u['cause']['code']}: {u['cause']['text']}"
        if u["drained"]:
            cause = "drained; " + cause
        if u["suppressed"]:
            cause = f"damped (penalty {u['penalty']:.0f}); " + cause
        head = f"{u['name']:<{nw}} {u['interface']:<{iw}} {u['kind']:<9} "
        tail = f" {rtt:>8} {loss:>5} {_age(u['age_s']):>6}  "
        lines.append(
            head + _paint(f"{state:<10}", u["state"], tty) + tail + _cut(cause, WIDTH - len(head) - 10 - len(tail))
        )
    lines += _dual_stack_lines(st["uplinks"], tty)
    lines += ["", f"{'CLASS':<{cw}} {'ROUTE':<{rw}} {'SINCE':>6} {'SPARE':>5}  CAUSE"]
    for c, route in zip(st["classes"], routes, strict=True):
        cause = f"{c['cause']['code']}: {c['cause']['text']}"
        # SPARE: usable uplinks + known-good cold standby ("1+1"); "!" while the last-uplink alarm is up.
        r = c.get("redundancy")
        spare = "-" if r is None else f"{r['usable']}+{r['standby']}" + ("!" if r["alarm"] else "")
        head = f"{c['name']:<{cw}} {route:<{rw}} {_age(c['age_s']):>6} "
        lines.append(
            head
            + _paint(f"{spare:>5}", "DOWN" if r and r["alarm"] else "", tty)
            + "  "
            + _cut(cause, WIDTH - len(head) - 7)
        )
    if st.get("modems"):
        lines += [
            "",
            f"{'MODEM':<{nw}} {'PROFILE':<16} {'PHASE':<10} {'REG':<10} {'OPERATOR':<8} {'RAT':<6} {'SIG':>4}  CAUSE",
        ]
        for m in st["modems"]:
            profile = m["profile"] + (f">{m['target']}" if m.get("target") else "")
            sig = "-" if m["signal"] is None else f"{m['signal']}%"
            reg = m["registration"] + ("+data" if m["bearer"] else "")
            head = (
                f"{m['uplink']:<{nw}} {profile:<16} {m['phase']:<10} {reg:<10} {m['operator'] or '-':<8} "
                f"{m['access'] or '-':<6} {sig:>4}  "
            )
            lines.append(head + _cut(f"{m['cause']['code']}: {m['cause']['text']}", WIDTH - len(head)))
        service = st.get("services", {}).get("modem")
        if service is not None:  # ModemManager reached or not, how many modems it lists
            lines.append(_cut(f"modem service: {service['note']}", WIDTH))
            for uplink, m in service.get("modems", {}).items():
                if m.get("bearer"):  # the last bearer check or connect at start (services/modem.py)
                    lines.append(_cut(f"  {uplink} bearer: {m['bearer']}", WIDTH))
    if st["overrides"]:
        lines += ["", "OVERRIDES"]
        for o in st["overrides"]:
            what = {
                "force": f"{o['class']} -> {o['uplink']}",
                "profile": f"{o['uplink']} on profile {o.get('profile')}",
            }.get(o["kind"], f"drain {o['uplink']}")
            forced = " (forced)" if o["force"] else ""
            lines.append(
                _cut(
                    f"{o['id']:<4} {what}{forced}  {o['reason']!r} by {o['by']}, {_age(o['expires_in_s'])} left", WIDTH
                )
            )
    return "\n".join(lines)


def render_clock(rep: dict[str, Any], tty: bool) -> str:
    colour = {"sane": "UP", "holdover": "DEGRADED", "suspect": "DEGRADED", "insane": "DOWN"}.get(rep["state"], "")
    bound = f" ± {rep['bound_s']:.4f}s" if rep.get("bound_s") is not None else ""
    lines = [f"clock {_paint(rep['state'].upper(), colour, tty)}{bound}"]
    lines += [f"  {_cut(e, WIDTH - 2)}" for e in rep.get("evidence", [])]
    lines += ["", f"{'SERVER':<22} {'CLASS':<12} {'UPLINK':<9} {'OFFSET':>12} {'DELAY':>9} {'AGE':>6}  VERDICT"]
    for s in rep.get("sources", []):
        off = f"{s['offset_s']:+.4f}s" if "offset_s" in s else "-"
        delay = f"{s['delay_s'] * 1000:.1f}ms" if "delay_s" in s else "-"
        verdict = s["state"] + (f" ({s['error']})" if s.get("error") else "")
        state_colour = {"agrees": "UP", "falseticker": "DOWN", "no answer": "DEGRADED"}.get(s["state"], "")
        lines.append(
            f"{s['server']:<22} {str(s['class'])[:12]:<12} {s.get('uplink') or '-'!s:<9} {off:>12} "
            f"{delay:>9} {_age(s.get('age_s')):>6}  " + _paint(_cut(verdict, 30), state_colour, tty)
        )
    if rep.get("steps"):
        lines += ["", "STEPS (recent)"]
        for st in rep["steps"]:
            label = "explained" if st["explained"] else "UNEXPLAINED"
            lines.append(f"  {st['delta_s']:+.3f}s {_age(st['age_s'])} ago, {label}: {st['why']}")
    for name in ("chrony", "kernel"):
        if rep.get(name):
            lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in rep[name].items()))
    return "\n".join(lines)


def render_history(records: list[dict[str, Any]], tty: bool) -> str:
    out = []
    for r in records:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("wall", 0)))
        kind = r.get("kind", "?")
        cause = r.get("cause", {})
        why = f"{cause.get('code')}: {cause.get('text')}" if isinstance(cause, dict) and cause else ""
        if kind == "decision":
            what = f"{r['class']}: {r.get('from') or '-'} -> {r.get('uplink') or r.get('route')}"
        elif kind == "uplink":
            what = f"{r['uplink']}: {r['from']} -> " + _paint(r["to"], r["to"], tty)
        elif kind == "alarm":
            label = r["severity"].upper() if r.get("state", "raised") in ("raised", "notice") else r["state"].upper()
            what = _paint(label, r["severity"], tty) + f" {r.get('id') or r['subject']}"
            if r.get("by"):
                what += f" by {r['by']}"
        elif kind == "command":
            what = f"{'ok' if r['ok'] else 'REFUSED'}: {r['text']}"
        elif kind == "drill":
            v = r.get("verdict")
            verdict = " " + _paint(v.upper(), {"pass": "UP", "fail": "DOWN"}.get(v, ""), tty) if v else ""
            what = f"{r['uplink']}: {r['from']} -> {r['to']}{verdict}"
        elif kind == "drill-check":
            value = "-" if r.get("value") is None else f"{r['value']:g}{r.get('unit', '')}"
            what = f"{r['uplink']} {r['check']} {value} " + ("ok" if r["ok"] else _paint("FAILED", "DOWN", tty))
        elif kind == "canary":
            what = f"{r['uplink']} canary -> " + (f"via {r['to']}" if r.get("to") else "unreachable")
        elif kind == "remote-refused":
            what = f"REFUSED {r.get('cmd') or '?'} (key {r.get('key') or 'none'}): {r.get('reason')}"
        else:
            what = json.dumps({k: v for k, v in r.items() if k not in ("wall", "mono", "kind", "cause")})
        out.append(_cut(f"{stamp} {kind:<9} {what}  {why}".rstrip(), WIDTH if not tty else 10 * WIDTH))
    return "\n".join(out)


def render_alarms(rows: list[dict[str, Any]], tty: bool) -> str:
    if not rows:
        return "no active alarms"
    colour = {"critical": "DOWN", "warning": "DEGRADED", "info": "UP"}
    lines = [f"{'SEVERITY':<9} {'ID':<28} {'SINCE':>6}  {'ACK':<16} CAUSE"]
    for r in rows:
        ack = r["acked"]["by"] if r["acked"] else "-"
        cause = f"{r['cause']['code']}: {r['cause']['text']}"
        lines.append(
            _paint(f"{r['severity']:<9}", colour.get(r["severity"], ""), tty)
            + f" {_cut(r['id'], 28):<28} {_age(r['age_s']):>6}  {_cut(ack, 16):<16} "
            + _cut(cause, WIDTH - 66)
        )
    return "\n".join(lines)


def render_drills(rows: list[dict[str, Any]], tty: bool) -> str:
    if not rows:
        return "no drills in the policy"
    lines = [f"{'UPLINK':<10} {'SCHEDULE':<26} {'VERIFIED':<10} {'LAST':<11} {'NEXT':>7}  DETAIL"]
    for r in rows:
        last = r["last"]
        verdict = last["verdict"] if last else "-"
        verified = f"{_age(r['verified_age_s'])} ago" if r["verified_age_s"] is not None else "never"
        nxt = _age(r["due_in_s"]) if r["due_in_s"] is not None else "window"
        if r["running"]:
            run = r["running"]
            detail = f"RUNNING {run['phase']} for {_age(run['age_s'])}, {run['rounds']} rounds, {run['bytes']} bytes"
        elif r["postponed"]:
            detail = f"postponed: {r['postponed']}"
        elif last:
            detail = f"{last['cause']['code']}: {last['cause']['text']}"
        else:
            detail = ""
        colour = {"pass": "UP", "fail": "DOWN", "aborted": "DEGRADED"}.get(verdict, "")
        lines.append(
            f"{r['uplink']:<10} {_cut(r['schedule'], 26):<26} {verified:<10} "
            + _paint(f"{verdict:<11}", colour, tty)
            + f" {nxt:>7}  "
            + _cut(detail, WIDTH - 70)
        )
        canary = r.get("canary")
        if canary:
            port = f":{canary['port']}" if canary.get("port") else ""
            done = f", {r['running']['canary_rounds']} of {canary['rounds']} rounds" if r["running"] else ""
            lines.append(
                f"{'':<10} canary {canary['kind']} {canary['target']}{port} (table {canary['table']}, "
                f"mark {canary['fwmark']}) {canary['route']}{done}"
            )
        checks = (r["running"] or {}).get("checks") or (last or {}).get("checks") or []
        for c in checks:
            value = "-" if c["value"] is None else f"{c['value']:g}{c['unit']}"
            lines.append(f"{'':<10} {c['check']:<14} {value:>10}  {'ok' if c['ok'] else 'FAILED'}")
    return "\n".join(lines)


def render_report(args: argparse.Namespace, reply: dict[str, Any]) -> None:
    from failoverd import report  # noqa: PLC0415

    inc = report.build(
        reply["records"], reply["since"], reply["until"], site=reply.get("site"), metered=reply.get("metered", ())
    )
    text = report.markdown(inc)
    if getattr(args, "out", None):
        Path(args.out).write_text(text)
        print(f"report written to {args.out}")
    else:
        print(text, end="")
    if getattr(args, "plot", None):
        report.plot(inc, args.plot)
        print(f"plot written to {args.plot}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="failoverctl", description=__doc__)
    p.add_argument("--socket", default=os.environ.get("FAILOVERD_SOCKET", DEFAULT_SOCKET))
    p.add_argument("--json", action="store_true", help="print the daemon's JSON reply")
    m = p.add_argument_group("remote, over MQTT (signed; see control.mqtt in the policy)")
    m.add_argument(
        "--mqtt",
        metavar="BROKER[:PORT]",
        default=os.environ.get("FAILOVERD_MQTT"),
        help="the broker: a name or an address; an IPv6 one with a port in brackets, [2001:db8::10]:1883",
    )
    where = m.add_mutually_exclusive_group()
    where.add_argument("--site", help="the gateway to command (its policy's site)")
    where.add_argument("--fleet", action="store_true", help="every gateway on the fleet topic; see --sites")
    m.add_argument("--sites", type=lambda s: [x for x in s.split(",") if x], help="with --fleet: only these")
    m.add_argument(
        "--key-file",
        default=os.environ.get("FAILOVERD_KEY_FILE"),
        help="your Ed25519 private key (PEM, mode 600; see keygen)",
    )
    m.add_argument("--key", help="the key's name in the gateways' keys files (default: the key file's name, no .key)")
    m.add_argument("--prefix", default="failoverd", help="topic prefix (default failoverd)")
    m.add_argument("--tls", action="store_true", help="TLS to the broker (default port 8883)")
    # The broker's options, like --mqtt and --key-file, may come from the environment (FAILOVERD_CA_FILE...),
    # so that an operator's shell profile holds them once rather than every command line.
    env = os.environ.get
    m.add_argument(
        "--ca-file",
        default=env("FAILOVERD_CA_FILE"),
        help="with --tls: the CA of the broker's certificate (default: the system's)",
    )
    m.add_argument(
        "--cert-file",
        default=env("FAILOVERD_CERT_FILE"),
        help="with --tls: a client certificate (PEM), for brokers that require one",
    )
    m.add_argument(
        "--cert-key-file",
        default=env("FAILOVERD_CERT_KEY_FILE"),
        help="with --cert-file: its private key, if not in the certificate file",
    )
    m.add_argument(
        "--username",
        default=env("FAILOVERD_USERNAME"),
        help="the broker's username (not needed with a client certificate)",
    )
    m.add_argument(
        "--password-file", default=env("FAILOVERD_PASSWORD_FILE"), help="with --username: a file holding the password"
    )
    m.add_argument("--wait", type=float, default=5.0, help="seconds to wait for replies (default 5)")
    v = p.add_argument_group(
        "the fleet's status (--fleet status)",
        "Read from the gateways' retained statuses in one subscription (no command is sent, no key needed). "
        "A site is offline when its status says online: false (stopped, or the broker's last will); stale when "
        "it says online but was not refreshed for --stale seconds (gateway, broker or bridge cut off); on backup "
        "when a class left the first uplink of its path; on satellite when a class goes via a satellite uplink; "
        "with a bad clock when the clock checker says suspect or insane; 'no-route' when a class is routed via no "
        "uplink.",
    )
    v.add_argument(
        "--where",
        metavar="KEY=VALUE,...",
        help="only the sites that match every KEY (alternatives with |): "
        + "; ".join(f"{k}: {h}" for k, h in fleetview.WHERE_KEYS.items())
        + ". E.g. class=dispatch,uplink=sat or state=offline|stale",
    )
    v.add_argument("--summary", action="store_true", help="print the counts only, not a line per site")
    v.add_argument(
        "--stale",
        type=float,
        default=fleetview.STALE_AFTER,
        metavar="SECONDS",
        help=f"a status older than this is stale (default {fleetview.STALE_AFTER:g}: three missed refreshes)",
    )
    v.add_argument(
        "--live", action="store_true", help="ask every gateway instead (a signed status command; needs --key-file)"
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    groups: dict[str, Any] = {}  # `drill-run` in the table is `failoverctl drill run`
    for cmd in COMMANDS.values():
        group, _, leaf = cmd.name.partition("-")
        if not leaf:
            parser = sub.add_parser(cmd.name, help=cmd.help)
            _add_command(parser, cmd)
            if cmd.name == "status":  # the fleet view's options, also after the command (--fleet status --where ...)
                for option, kind in (("--where", str), ("--stale", float)):
                    parser.add_argument(option, type=kind, default=argparse.SUPPRESS, help=f"see {option} above")
                for option in ("--summary", "--live"):
                    parser.add_argument(option, action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            if cmd.name == "report":  # rendered here, from the records the daemon sends
                parser.add_argument("--out", metavar="FILE", help="write the Markdown here (default: print it)")
                parser.add_argument("--plot", metavar="FILE.png", help="also draw the period as a PNG")
            continue
        if group not in groups:
            groups[group] = sub.add_parser(group, help=f"{group} commands").add_subparsers(dest="subcmd", required=True)
        parser = groups[group].add_parser(leaf, help=cmd.help)
        parser.set_defaults(cmd=cmd.name)
        _add_command(parser, cmd)
    keygen = sub.add_parser("keygen", help="make an operator's signing keypair (no daemon involved)")
    keygen.add_argument("name", metavar="NAME", help="the key's name, as gateways will know it")
    keygen.add_argument("--out", default=".", metavar="DIR", help="where NAME.key and NAME.pub go (default .)")
    return p


def _add_command(parser: argparse.ArgumentParser, cmd: Command) -> None:
    """A subcommand's arguments as the command table declares them."""
    choose = parser.add_mutually_exclusive_group(required=True) if cmd.one_of else None
    for a in cmd.args:
        if a.cli == "filled":
            continue
        into: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup = parser
        if choose is not None and a.key in cmd.one_of:
            into = choose
        if a.cli == "positional":
            optional = not a.required or choose is not None
            into.add_argument(
                f"arg_{a.key}", metavar=a.metavar or a.key.upper(), help=a.help, nargs="?" if optional else None
            )
        elif a.kind == "bool":
            into.add_argument(f"--{a.key}", dest=f"arg_{a.key}", action="store_true", help=a.help)
        else:
            into.add_argument(
                f"--{a.key}",
                dest=f"arg_{a.key}",
                metavar=a.metavar or a.key.upper(),
                help=a.help,
                required=a.required,
                default=a.default,
                type=int if a.kind == "int" else str,
            )
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")


def to_request(args: argparse.Namespace) -> dict[str, Any]:
    """The request for the daemon, with the arguments the command table names; `by` says who sent it."""
    cmd = COMMANDS[args.cmd]
    req: dict[str, Any] = {"cmd": cmd.name}
    for a in cmd.args:
        if a.cli == "filled":
            if a.key == "by":
                req["by"] = f"failoverctl:{os.environ.get('SUDO_USER') or os.environ.get('USER') or os.getuid()}"
            continue
        value = getattr(args, f"arg_{a.key}", None)
        if value is not None and value is not False:
            req[a.key] = value
    return req


@dataclass(frozen=True, slots=True)
class Answers:
    """What came back from a remote command: the replies; for a fleet command, the sites whose retained
    status said online when it was sent (None: the statuses could not be read) and how many others had
    a status (offline, stale, unreadable: not waited for)."""

    replies: list[dict[str, Any]]
    expected: frozenset[str] | None = None
    not_awaited: int = 0

    def silent(self, sites: Sequence[str] | None) -> list[str]:
        """The sites that should have answered and did not."""
        awaited = set(sites) if sites else self.expected or set()
        return sorted(awaited - {str(r.get("site")) for r in self.replies})


async def remote(args: argparse.Namespace, request: dict[str, Any]) -> Answers:
    """Sign the request, publish it to one site's or the fleet's command topic, collect the replies.

    A fleet command without --sites also learns which sites to wait for, without delaying the command:
    it subscribes to the retained statuses and publishes the end marker (as `--fleet status` does,
    `retained_statuses`), then the command at once. The broker queues for this client the retained
    statuses, then the marker, then (later still) the replies the command causes; when the marker
    comes, the sites online by their statuses are the ones waited for, so it returns as soon as the
    last of them has answered. No marker (a broker whose ACL lacks `fleet/sync/#`): every reply
    within --wait is taken, as for a fleet command before."""
    from failoverd.control.signing import fleet_dest, load_private_key, sign, site_dest  # noqa: PLC0415

    key_file = Path(args.key_file)
    private = load_private_key(key_file)
    name = args.key or key_file.stem
    rid = uuid.uuid4().hex
    prefix = args.prefix.rstrip("/")
    topic = f"{prefix}/fleet/cmd" if args.fleet else f"{prefix}/{args.site}/cmd"
    awaited = set(args.sites) if args.fleet and args.sites else {args.site} if not args.fleet else None
    marker = sync_topic(prefix, rid) if args.fleet and not args.sites else None
    statuses: dict[str, bytes] = {}
    expected: frozenset[str] | None = None
    not_awaited = 0
    by_site: dict[str, dict[str, Any]] = {}
    async with broker_client(args, rid) as client:
        await client.subscribe(f"{prefix}/+/reply" if args.fleet else f"{prefix}/{args.site}/reply", qos=1)
        if marker is not None:
            await client.subscribe(f"{prefix}/+/status", qos=1)
            await client.subscribe(marker, qos=1)
            await client.publish(marker, rid, qos=1)
        # The destination is signed with the command: a copy replayed on another topic is refused there.
        dest = fleet_dest(prefix, args.sites) if args.fleet else site_dest(prefix, args.site)
        signed = sign({**request, "id": rid}, name, private, time.time(), dest)
        await client.publish(topic, json.dumps(signed), qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.wait):
                async for message in client.messages:
                    where = str(message.topic)
                    if marker is not None and expected is None:
                        if where == marker:
                            now = time.time()
                            views = [fleetview.read_status(s, doc, now, args.stale) for s, doc in statuses.items()]
                            expected = frozenset(v.site for v in views if "online" in v.conditions)
                            not_awaited, awaited = len(views) - len(expected), set(expected)
                            await client.unsubscribe(f"{prefix}/+/status")  # what the command changes: not wanted
                        elif (site := status_site(where, prefix)) is not None and isinstance(message.payload, bytes):
                            statuses[site] = message.payload
                    reply = take_reply(where, message.payload, rid, prefix)
                    if reply is not None and reply["site"] not in by_site:
                        by_site[reply["site"]] = reply
                    if awaited is not None and awaited <= set(by_site):
                        break
    return Answers(list(by_site.values()), expected, not_awaited)


def broker_client(args: argparse.Namespace, rid: str) -> aiomqtt.Client:
    """An aiomqtt client for the broker the options name (not yet connected: `async with` it)."""
    import aiomqtt  # noqa: PLC0415 (only the remote path needs it)

    from failoverd.control.tls import SOCKET_OPTIONS, client_context  # noqa: PLC0415

    host, port = split_hostport(args.mqtt, 8883 if args.tls else 1883)  # [v6]:port, v6, name:port, ...
    password = Path(args.password_file).read_text().strip() if args.password_file else None
    tls = client_context(args.ca_file, args.cert_file, args.cert_key_file) if args.tls else None
    return aiomqtt.Client(
        host,
        port,
        identifier=f"failoverctl-{rid[:12]}",
        username=args.username,
        password=password,
        tls_context=tls,
        socket_options=SOCKET_OPTIONS,
        timeout=args.wait,
    )


def sync_topic(prefix: str, nonce: str) -> str:
    """Where failoverctl sends itself the marker that ends a retained burst. Under `fleet/`, which no site
    can be named, so no gateway's topics are touched; the shipped ACL lets operators read and write it."""
    return f"{prefix}/fleet/sync/{nonce}"


async def collect_statuses(args: argparse.Namespace) -> tuple[dict[str, bytes], bool]:
    """Every site's retained status and whether the burst was seen to end (`retained_statuses`)."""
    async with broker_client(args, uuid.uuid4().hex) as client:
        return await retained_statuses(client, args.prefix.rstrip("/"), args.wait)


def status_site(topic: str, prefix: str) -> str | None:
    """The site whose status topic this is (`<prefix>/<site>/status`), or None."""
    if not (topic.startswith(prefix + "/") and topic.endswith("/status")):
        return None
    site = topic[len(prefix) + 1 : -len("/status")]
    return site if site and "/" not in site and site != "fleet" else None


async def retained_statuses(client: aiomqtt.Client, prefix: str, wait: float) -> tuple[dict[str, bytes], bool]:
    """Every site's retained status, in one subscription to `<prefix>/+/status`; and whether the burst
    was seen to end.

    How the end is known: right after the subscription is acknowledged, failoverctl subscribes to a topic
    of its own and publishes a marker there. The broker queues the retained messages for this client when
    it handles the SUBSCRIBE, and the marker only when it handles the PUBLISH that comes after it on the
    same connection, both at QoS 1 in one per-client queue: when the marker arrives, the burst is over.
    No marker within `wait` (a broker whose ACL does not grant the topic): what came is returned, marked
    incomplete. A status published live while collecting replaces the retained one (it is newer)."""
    nonce = uuid.uuid4().hex
    marker = sync_topic(prefix, nonce)
    statuses: dict[str, bytes] = {}
    complete = False
    await client.subscribe(f"{prefix}/+/status", qos=1)
    await client.subscribe(marker, qos=1)
    await client.publish(marker, nonce, qos=1)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            async for message in client.messages:
                topic = str(message.topic)
                if topic == marker:
                    complete = True
                    break
                site = status_site(topic, prefix)
                if site is not None and isinstance(message.payload, bytes):
                    statuses[site] = message.payload
    await client.unsubscribe(marker)
    return statuses, complete


def main_fleet_status(args: argparse.Namespace) -> int:
    """`failoverctl --mqtt BROKER --fleet status`: the summary, the matching sites, from retained statuses."""
    try:
        where = fleetview.Where.parse(args.where or "")
    except fleetview.WhereError as exc:
        print(f"failoverctl: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        statuses, complete = asyncio.run(collect_statuses(args))
    except Exception as exc:  # the broker, a certificate: say which and stop
        print(f"failoverctl: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    now = time.time()
    views = [fleetview.read_status(site, doc, now, args.stale) for site, doc in sorted(statuses.items())]
    if args.sites:
        views = [v for v in views if v.site in args.sites]
        for site in sorted(set(args.sites) - {v.site for v in views}):
            print(f"failoverctl: no retained status for site {site}", file=sys.stderr)
    chosen = [v for v in views if where(v)]
    total, matched = fleetview.summarise(views), fleetview.summarise(chosen)
    if args.json:
        out: dict[str, Any] = {"complete": complete, "summary": {"sites": total.sites, **total.counts}}
        if args.where:
            out["matched"] = {"sites": matched.sites, **matched.counts}
        if not args.summary:
            out["sites"] = [fleetview.as_json(v) for v in chosen]
        print(json.dumps(out, indent=2))
    else:
        print(total.line())
        if args.where:
            print(f"where {args.where}: {matched.line()}")
        if not args.summary and chosen:
            print()
            print(fleetview.HEADER)
            for v in chosen:
                print(_cut(fleetview.row(v), 10 * WIDTH))
    if not complete:
        print(
            f"failoverctl: the broker's retained statuses did not end within {args.wait:g}s: the list may be "
            f"incomplete (does the broker's ACL let you use {sync_topic(args.prefix.rstrip('/'), '#')}?)",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    return EXIT_OK


def take_reply(topic: str, payload: Any, rid: str, prefix: str) -> dict[str, Any] | None:
    """A reply to request `rid`, or None. The site is the one the topic names: the broker lets a gateway
    publish only on its own reply topic, while the body is whatever that gateway wrote, so a reply whose
    body names another site (a stolen gateway speaking for others) is not taken."""
    head, _, rest = topic.partition(f"{prefix}/")
    site, _, tail = rest.partition("/")
    if head or tail != "reply" or not site:
        return None
    try:
        reply = json.loads(payload)
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(reply, dict) or reply.get("id") != rid:
        return None
    if reply.get("site", site) != site:
        print(f"failoverctl: ignored a reply on {topic} that claims to be from {reply.get('site')!r}", file=sys.stderr)
        return None
    return {**reply, "site": site}


def summary(reply: dict[str, Any]) -> str:
    """One line for a gateway in a fleet's answer."""
    if not reply.get("ok"):
        return f"refused: {reply.get('error')}"
    if "classes" in reply and "uplinks" in reply:
        classes = ", ".join(
            f"{c['name']} {'via ' + str(c['uplink']) if c['route'] == 'via' else c['route']}" for c in reply["classes"]
        )
        uplinks = ", ".join(f"{u['name']} {u['state']}" for u in reply["uplinks"])
        return f"{classes}; {uplinks}; clock {reply['clock']['state']}"
    return str(reply.get("text") or "ok") + "".join(f"; moved {c}" for c in reply.get("changes", []))


def transport_problem(args: argparse.Namespace) -> str:
    """Why the broker options do not fit together ("" if they do): rather than, say, a client
    certificate silently left out of a plaintext session."""
    given = [f"--{o.replace('_', '-')}" for o in ("ca_file", "cert_file", "cert_key_file") if getattr(args, o)]
    if given and not args.tls:
        return f"{', '.join(given)} (given or from FAILOVERD_*) only work over TLS: add --tls"
    if args.cert_key_file and not args.cert_file:
        return "--cert-key-file is the key of --cert-file: give --cert-file"
    if args.password_file and not args.username:
        return "--password-file needs --username"
    return ""


def main_remote(args: argparse.Namespace) -> int:
    if not (args.site or args.fleet):
        print("failoverctl: with --mqtt, name the gateway (--site SITE) or the whole --fleet", file=sys.stderr)
        return EXIT_REFUSED
    if args.sites is not None and not args.fleet:
        print("failoverctl: --sites goes with --fleet (for one gateway, --site SITE)", file=sys.stderr)
        return EXIT_REFUSED
    if args.sites is not None and not args.sites:
        # An empty list must not widen a narrow command to the whole fleet.
        print("failoverctl: --sites names no site: list them (a,b), or leave --sites out for all", file=sys.stderr)
        return EXIT_REFUSED
    problem = transport_problem(args)
    try:
        split_hostport(args.mqtt, 1883)
    except ValueError as exc:
        problem = f"--mqtt: {exc}"
    fleet_status = args.fleet and args.cmd == "status"
    if fleet_status and not args.live:
        if problem:
            print(f"failoverctl: {problem}", file=sys.stderr)
            return EXIT_REFUSED
        return main_fleet_status(args)
    if args.where or args.summary or (args.live and not fleet_status):
        # --where and --summary read the retained statuses; --live asks the gateways instead.
        print("failoverctl: --where and --summary go with --fleet status, --live with --fleet", file=sys.stderr)
        return EXIT_REFUSED
    if not args.key_file:
        print("failoverctl: remote commands are signed: give --key-file (or FAILOVERD_KEY_FILE)", file=sys.stderr)
        return EXIT_REFUSED
    if problem:
        print(f"failoverctl: {problem}", file=sys.stderr)
        return EXIT_REFUSED
    from failoverd.control.signing import KeyFileError, load_private_key  # noqa: PLC0415

    try:
        load_private_key(Path(args.key_file))  # its mode and form, before any broker is tried
    except KeyFileError as exc:
        print(f"failoverctl: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        answers = asyncio.run(remote(args, to_request(args)))
    except Exception as exc:  # the key file, the broker: say which and stop
        print(f"failoverctl: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    replies = answers.replies
    if answers.not_awaited:
        n = answers.not_awaited
        print(f"failoverctl: {_sites(n)} offline, stale or unreadable when sent: not waited for", file=sys.stderr)
    if args.fleet and not args.sites and answers.expected is None:
        marker = sync_topic(args.prefix.rstrip("/"), "#")
        print(
            f"failoverctl: the sites' statuses could not be read (does the broker's ACL let you use {marker}?):"
            f" took every reply within {args.wait:g}s",
            file=sys.stderr,
        )
    if not replies:
        if answers.expected is not None and not answers.expected:
            print("failoverctl: no site was online when sent: no reply awaited", file=sys.stderr)
        else:
            where = "any gateway" if args.fleet else f"site {args.site}"
            print(f"failoverctl: no reply from {where} within {args.wait:g}s", file=sys.stderr)
        return EXIT_UNREACHABLE
    silent = answers.silent(args.sites)
    if args.json:
        print(json.dumps(replies if args.fleet else replies[0], indent=2))
    elif args.fleet:
        for r in sorted(replies, key=lambda r: str(r.get("site"))):
            print(f"{r.get('site')}: {summary(r)}")
    else:
        show(args, replies[0], sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    if silent:
        shown = ", ".join(silent[:SILENT_SHOWN]) + (
            f" and {len(silent) - SILENT_SHOWN} more" if len(silent) > SILENT_SHOWN else ""
        )
        print(f"failoverctl: no reply from {_sites(len(silent))} within {args.wait:g}s: {shown}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return EXIT_OK if all(r.get("ok") for r in replies) else EXIT_REFUSED


def _sites(n: int) -> str:
    return f"{n} site" + ("" if n == 1 else "s")


def main_keygen(args: argparse.Namespace) -> int:
    from failoverd.control.signing import KeyFileError, write_keypair  # noqa: PLC0415

    try:
        key, pub = write_keypair(args.name, Path(args.out))
    except KeyFileError as exc:
        print(f"failoverctl: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"private key {key} (mode 600): keep it with the operator, sign with --key-file {key}")
    print(f"public key  {pub}: add its line to control.mqtt.keys_file on each gateway, then reload:")
    print(f"  {pub.read_text().strip()}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "keygen":
        return main_keygen(args)
    if args.mqtt:
        return main_remote(args)
    if args.where or args.summary or args.live:
        print("failoverctl: --where, --summary and --live go with --mqtt BROKER --fleet status", file=sys.stderr)
        return EXIT_REFUSED
    tty = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    try:
        reply = Client(args.socket).request(to_request(args))
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"failoverctl: no failoverd is listening on {args.socket} (is it running? --socket?)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except PermissionError:
        print(f"failoverctl: not allowed to use {args.socket} (are you in its group?)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (TimeoutError, json.JSONDecodeError) as exc:
        print(f"failoverctl: no usable answer from failoverd: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    show(args, reply, tty)
    return EXIT_OK if reply.get("ok") else EXIT_REFUSED


def show(args: argparse.Namespace, reply: dict[str, Any], tty: bool) -> None:
    if args.json:
        print(json.dumps(reply, indent=2))
    elif not reply.get("ok"):
        print(f"refused: {reply.get('error')}", file=sys.stderr)
        for p in reply.get("problems", []):
            print(f"  {p}", file=sys.stderr)
    elif args.cmd == "status":
        print(render_status(reply, tty))
    elif args.cmd == "history":
        print(render_history(reply["records"], tty))
    elif args.cmd == "clock":
        print(render_clock(reply, tty))
    elif args.cmd == "explain":
        print("\n".join(reply["chain"]))
    elif args.cmd == "drill-status":
        print(render_drills(reply["drills"], tty))
    elif args.cmd == "alarms":
        print(render_alarms(reply["alarms"], tty))
    elif args.cmd == "report":
        render_report(args, reply)
    else:
        print(reply.get("text", "ok"))
        for change in reply.get("changes", []):
            print(f"  moved {change}")
        for service, outcome in reply.get("services", {}).items():
            print(f"  {service}: {outcome}")
    if reply.get("note"):
        print(f"note: {reply['note']}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
