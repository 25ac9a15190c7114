"""The `failoverd` command: check, simulate, run, probe, purge, clock."""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from failoverd.errors import PolicyError
from failoverd.policy import load_policy
from failoverd.policy.model import MatchSpec, MqttSpec, Policy, UplinkSpec

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2


def _match_text(m: MatchSpec) -> str:
    parts = []
    if m.src:
        parts.append("src " + ",".join(m.src))
    if m.dst:
        parts.append("dst " + ",".join(m.dst))
    if m.protocol is not None:
        parts.append(f"proto {m.protocol}")
    for name, rng in (("sport", m.sport), ("dport", m.dport)):
        if rng is not None:
            parts.append(f"{name} {rng[0]}" + (f"-{rng[1]}" if rng[1] != rng[0] else ""))
    if m.dscp:
        parts.append("dscp " + ",".join(str(d) for d in m.dscp))
    if m.fwmark is not None:
        parts.append(f"fwmark {m.fwmark:#x}")
    if m.iif:
        parts.append(f"iif {m.iif}")
    return " ".join(parts)


def _uplink_text(u: UplinkSpec, nw: int = 10, iw: int = 8) -> str:
    via = f"via {u.next_hop}" if u.next_hop else "point-to-point"
    family = f"IPv{u.family}" if u.family is not None else "IPv4+IPv6"
    bits = [f"{u.name:<{nw}} {u.interface:<{iw}} {via:<22} {u.kind:<9} {family:<9}"]
    if u.operator:
        bits.append(f"carrier {u.operator}")
    if u.metered:
        bits.append(f"metered, admits {', '.join(sorted(u.admit or ()))}")
    elif u.admit is not None:
        bits.append(f"admits {', '.join(sorted(u.admit))}")
    bits.append(("cold standby, pre-warmed" if u.standby.prewarm else "cold standby") if u.standby.cold else "hot")
    if u.verify is not None:
        bits.append(f"verified within {u.verify.within:g}s ({u.verify.alarm or 'no alarm'})")
    if u.probes:
        fastest = min(p.interval for p in u.probes)
        bits.append(
            f"{len(u.probes)} probe(s) every {fastest * 1000:g} ms, down when {u.health.quorum} of {len(u.probes)} fail"
        )
    else:
        bits.append("no probes: carrier only")
    if u.modem is not None:
        md = u.modem
        order = " > ".join(f"{p.name} ({p.sim}, {p.plmn or 'automatic'})" for p in md.profiles)
        bits.append(f"profiles {order}; slot switches while covered: {'yes' if md.while_covered == 'any' else 'no'}")
    return "  ".join(bits)


def summary(policy: Policy) -> str:
    own = policy.ownership
    lines = [
        f"{policy.source}: OK — site {policy.site}",
        f"  owns route protocol {own.route_protocol}, rule priorities {own.rule_priorities[0]}-"
        f"{own.rule_priorities[1]}, tables {own.tables[0]}-{own.tables[1]}, marks in {own.fwmark_mask:#010x}",
        f"  uplinks ({len(policy.uplinks)}):",
    ]
    # Columns as wide as the longest name (a twin's, `fiber-east/v6`, is long), at least as before.
    nw = max([10, *(len(n) for n in [*policy.uplinks, *policy.classes])])
    iw = max([8, *(len(u.interface) for u in policy.uplinks.values())])
    lines += [f"    {_uplink_text(u, nw, iw)}" for u in policy.uplinks.values()]
    lines.append(f"  classes ({len(policy.classes)}), matched in this order:")
    for c in policy.classes.values():
        match = " | ".join(_match_text(m) for m in c.matches) or "everything else"
        back = f"revertive after {c.preempt_delay:g}s" if c.revertive else "non-revertive"
        lines.append(f"    {c.name:<{nw}} {match}")
        ready = ""
        if c.redundancy.alarm is not None:
            ready += f"; last uplink: {c.redundancy.alarm} alarm"
        if c.redundancy.prewarm:
            ready += "; pre-warms cold standby"
        family = f"IPv{c.family} only" if c.family is not None else "IPv4 and IPv6"
        lines.append(f"    {'':<{nw}} {family}; path {' > '.join(c.path)}; {back}; all down: {c.when_all_down}{ready}")
    if policy.drills:
        lines.append(f"  drills ({len(policy.drills)}):")
    for d in policy.drills.values():
        when = f"every {d.every:g}s" if d.every is not None else f"window {d.window.text if d.window else '?'} UTC"
        budget = f", at most {d.max_bytes} bytes" if d.max_bytes is not None else ""
        lines.append(
            f"    {d.uplink:<{nw}} {when}, this site at +{d.offset:.0f}s; {d.rounds} rounds, "
            f"loss <= {d.max_loss_percent:g}%, within {d.max_duration:g}s{budget}; verifies for {d.valid_for:g}s"
        )
        if d.canary is not None:
            cy = d.canary
            port = f":{cy.probe.port}" if cy.probe.port is not None else ""
            lines.append(
                f"    {'':<{nw}} canary {cy.probe.kind} to {cy.probe.target}{port} every {cy.probe.interval:g}s, "
                f"{cy.rounds} rounds, loss <= {cy.max_loss_percent:g}%; table {cy.table}, mark {cy.fwmark:#x}"
            )
    a = policy.alarms
    if a.notifiers:
        kinds = ", ".join(f"{n.name} ({n.kind})" for n in a.notifiers.values())
        steps = "; ".join(f"after {after:g}s to {', '.join(to)}" for after, to in a.escalation) or "no escalation"
        repeat = f"; repeated every {a.repeat:g}s" if a.repeat is not None else ""
        lines.append(f"  alarms: notifiers {kinds}; {len(a.route)} route rules; {steps}{repeat}")
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.policy:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            for p in exc.problems:
                print(p, file=sys.stderr)
            status = EXIT_INVALID
            continue
        warnings = [
            *deployment_warnings(policy),
            *tls_warnings(policy.control.mqtt),
            *metrics_warnings(policy),
            *modem_warnings(policy),
        ]
        for warning in [*warnings, *user_warnings(policy, Path(path), args.user)]:
            print(f"{path}: warning: {warning}", file=sys.stderr)
        if not args.quiet:
            print(summary(policy))
    return status


def modem_warnings(policy: Policy) -> list[str]:
    """Profiles that rely on enabling an eSIM profile, which ModemManager (1.20, and up to 1.24) cannot do:
    the modem service reaches an eSIM profile only as the enabled profile of an eUICC in some SIM slot."""
    out = []
    for u in policy.uplinks.values():
        esims = [p for p in u.modem.profiles if p.esim is not None] if u.modem is not None else []
        if not esims:
            continue
        names = ", ".join(f"{p.name} ({p.esim})" for p in esims)
        text = (
            f'uplink "{u.name}": profiles {names} name eSIM profiles; ModemManager cannot enable an eSIM profile '
            "(no such call in 1.20), so failoverd reaches one only by a slot switch to the eUICC that has it "
            "enabled, and any other switch to it fails (switch-unsupported)"
        )
        if len({p.esim.upper() for p in esims if p.esim}) > 1:
            text += ": two eSIM profiles on one eUICC cannot both be reached"
        out.append(text)
    return out


def metrics_warnings(policy: Policy) -> list[str]:
    """A metrics endpoint on every address answers on the uplinks too: the internet would read it."""
    m = policy.control.metrics
    if m is None or m.address not in ("0.0.0.0", "::"):
        return []
    return [
        f"control.metrics.listen {m.address} answers on every interface, the uplinks' too (no authentication): "
        "bind a LAN or management address, or filter the port"
    ]


def tls_warnings(mq: MqttSpec) -> list[str]:
    """The MQTT session's TLS files, tried as the daemon will: a CA or certificate it cannot use."""
    if not (mq.enabled and mq.tls):
        return []
    from failoverd.control.tls import client_context  # noqa: PLC0415

    try:
        client_context(mq.ca_file, mq.cert_file, mq.cert_key_file)
    except (OSError, ValueError) as exc:
        return [f"control.mqtt TLS: {exc}; the gateway could not connect to the broker"]
    return []


def deployment_warnings(policy: Policy) -> list[str]:
    """What a valid policy still cannot do on this machine (files it names), said before deploying."""
    mq = policy.control.mqtt
    if not mq.enabled:
        return []
    if mq.keys_file is None:
        return ["control.mqtt has no keys_file: status and events are published, every command is refused"]
    from failoverd.control.signing import KeyFileError, load_keys  # noqa: PLC0415

    try:
        load_keys(Path(mq.keys_file))
    except KeyFileError as exc:
        return [f"control.mqtt.keys_file: {exc}; remote commands would be refused"]
    return []


def permits(st: os.stat_result, uid: int, gids: set[int], bit: int) -> bool:
    """Whether the mode's owner, group or other bits grant `bit` (4 read, 1 search) to uid with gids,
    as the kernel picks the class (POSIX ACLs aside)."""
    mode, owner, group = st.st_mode, st.st_uid, st.st_gid
    if uid == 0:
        return True
    if uid == owner:
        return bool(mode & (bit << 6))
    if group in gids:
        return bool(mode & (bit << 3))
    return bool(mode & bit)


def unreadable(path: Path, uid: int, gids: set[int]) -> str | None:
    """Why uid could not read path (a directory on the way it may not enter, or the file's mode); None
    if it could, or if the file is missing (said elsewhere)."""
    path = path.absolute()
    try:
        for d in reversed(path.parents):
            st = d.stat()
            if not permits(st, uid, gids, 1):
                return f"it may not enter {d} (mode {stat.S_IMODE(st.st_mode):o}, owner {st.st_uid}:{st.st_gid})"
        st = path.stat()
    except FileNotFoundError:
        return None
    if not permits(st, uid, gids, 4):
        return f"mode {stat.S_IMODE(st.st_mode):o}, owner {st.st_uid}:{st.st_gid}"
    return None


def files_named(policy: Policy, path: Path) -> list[tuple[str, str]]:
    """The files the daemon reads: the policy and those it names, with the key that names each."""
    mq = policy.control.mqtt
    named = [("the policy", str(path))]
    if mq.enabled:
        named += [(f"control.mqtt.{k}", getattr(mq, k)) for k in ("keys_file", "password_file")]
        if mq.tls:
            named += [(f"control.mqtt.{k}", getattr(mq, k)) for k in ("ca_file", "cert_file", "cert_key_file")]
    return [(what, f) for what, f in named if f is not None]


def user_warnings(policy: Policy, path: Path, user: str) -> list[str]:
    """Run as root (who reads everything): the files the unit's user could not read. A policy only root
    may read fails the unit's ExecStartPre check, and systemd restarts it in a loop."""
    if os.geteuid() != 0 or not user:
        return []
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return []  # not installed here: nothing to say about it
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    out = []
    for what, name in files_named(policy, path):
        why = unreadable(Path(name), pw.pw_uid, gids)
        if why is not None:
            out.append(
                f"{what} {name}: user {user} (the unit's User=) cannot read it: {why}; "
                f"give it to group {user} with mode 640 (README, upgrading)"
            )
    return out


def cmd_simulate(args: argparse.Namespace) -> int:
    from failoverd.simulate import load_timeline, simulate  # noqa: PLC0415 (keeps `check` fast to start)

    try:
        policy = load_policy(args.policy)
        timeline = load_timeline(args.events, policy)
    except PolicyError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return EXIT_INVALID
    records = simulate(policy, timeline)
    for r in records:
        if args.json:  # the daemon's history records, as `failoverctl history --json` gives them
            print(json.dumps(r, sort_keys=False))
        elif (line := _simulated_line(r, args.verbose)) is not None:
            print(line)
    return EXIT_OK


def _simulated_line(r: dict[str, Any], verbose: bool) -> str | None:
    """One line of `failoverd simulate` for people: the simulated monotonic time, then what happened."""
    t = f"{r['mono']:10.3f}s"
    kind = r["kind"]
    cause = r.get("cause")
    why = f"{cause['code']}: {cause['text']}" if isinstance(cause, dict) else ""
    if kind == "decision":
        to = r["uplink"] or r["route"]
        return f"{t}  class  {r['class']:<10} {r.get('from') or '-':>10} -> {to:<12} {why}"
    if kind == "command":
        return f"{t}  reply  {'ok' if r['ok'] else 'REFUSED':<10} {r['request']:>10}    {r['text']}"
    if kind == "drill":
        verdict = f" {r['verdict'].upper()}" if "verdict" in r else ""
        return f"{t}  drill  {r['uplink']:<10} {r['from']:>10} -> {r['to']:<12} {why}{verdict}"
    if kind == "drill-check":
        value = "-" if r["value"] is None else f"{r['value']:g}{r['unit']}"
        return f"{t}  check  {r['uplink']:<10} {r['check']:>10}    {value:<12} {'ok' if r['ok'] else 'FAILED'} ({why})"
    if kind == "drill-postponed":
        return f"{t}  drill  {r['uplink']:<10} {'postponed':>10}    {why}"
    if kind == "canary":
        return f"{t}  canary {r['uplink']:<10} {'':>10} -> {r['to'] or 'unreachable':<12} {why}"
    if not verbose:
        return None
    if kind == "uplink":
        return f"{t}  uplink {r['uplink']:<10} {r['from']:>10} -> {r['to']:<12} {why}"
    if kind == "alarm":
        what = r.get("id") or r["subject"]
        return f"{t}  alarm  {r.get('state', 'notice'):<8} {r['severity']:<8} {what:<24} {why}"
    rest = {k: v for k, v in r.items() if k not in ("wall", "mono", "kind", "cause")}
    if why:
        rest["cause"] = why
    return f"{t}  {kind:<6} {json.dumps(rest)}"


def cmd_run(args: argparse.Namespace) -> int:
    from failoverd.observe.logging import configure  # noqa: PLC0415

    configure(args.log_level, json=True if args.log_json else None)
    if args.netns:
        from failoverd.kernel.netlink import set_netns  # noqa: PLC0415

        try:
            set_netns(args.netns)
        except OSError as exc:
            print(f"failoverd: cannot enter network namespace {args.netns!r}: {exc.strerror}", file=sys.stderr)
            return EXIT_INVALID
    from failoverd.runtime import Options, run  # noqa: PLC0415

    return run(
        Options(
            policy_path=Path(args.policy),
            state_dir=Path(args.state_dir) if args.state_dir else None,
            socket_path=args.socket,
            restore_on_exit=args.restore_on_exit,
        )
    )


def _policy_in_netns(args: argparse.Namespace) -> Policy | None:
    """Enter --netns (before any socket exists) and load --policy; None after printing its problems."""
    if args.netns:
        from failoverd.kernel.netlink import set_netns  # noqa: PLC0415

        set_netns(args.netns)
    try:
        return load_policy(args.policy)
    except PolicyError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return None


def cmd_probe(args: argparse.Namespace) -> int:
    """Send each probe of the policy once (or --count times) and print what came back."""
    import asyncio  # noqa: PLC0415

    from failoverd.probes.kinds import open_session  # noqa: PLC0415

    policy = _policy_in_netns(args)
    if policy is None:
        return EXIT_INVALID

    async def run_all() -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for name, u in policy.uplinks.items():
            if args.uplink and name not in args.uplink:
                continue
            for spec in u.probes:
                try:
                    session = open_session(spec, u)
                except OSError as exc:
                    rows.append({"uplink": name, "probe": spec.key, "ok": False, "detail": str(exc)})
                    continue
                try:
                    for _ in range(args.count):
                        out = await session.probe()
                        rtt = round(out.rtt * 1000, 3) if out.rtt is not None else None
                        rows.append(
                            {"uplink": name, "probe": spec.key, "ok": out.ok, "rtt_ms": rtt, "detail": out.detail}
                        )
                finally:
                    session.close()
        return rows

    rows = asyncio.run(run_all())
    for r in rows:
        if args.json:
            print(json.dumps(r))
        else:
            verdict = f"ok {r['rtt_ms']:.2f} ms" if r["ok"] else f"LOST ({r['detail']})"
            print(f"{r['uplink']:<10} {r['probe']:<40} {verdict}")
    return EXIT_OK if rows and all(r["ok"] for r in rows) else EXIT_FAILED


def cmd_purge(args: argparse.Namespace) -> int:
    """Remove every route, rule and nftables table failoverd owns (after uninstalling, or for a clean lab)."""
    import asyncio  # noqa: PLC0415

    from failoverd.kernel.writer import Applied, KernelWriter  # noqa: PLC0415

    policy = _policy_in_netns(args)
    if policy is None:
        return EXIT_INVALID

    async def purge() -> Applied:
        async with KernelWriter(policy.ownership) as kernel:
            return await kernel.purge()

    done = asyncio.run(purge())
    if done.nft_error is not None:
        print(f"failoverd: {done.nft_error}", file=sys.stderr)
    print(
        f"removed {len(done.removed)} routes and rules owned by failoverd "
        f"(route protocol {policy.ownership.route_protocol})"
    )
    return EXIT_OK


def cmd_clock(args: argparse.Namespace) -> int:
    """One-shot clock check against the given servers, like a sharper `chronyc sources`."""
    import asyncio  # noqa: PLC0415
    import time  # noqa: PLC0415

    from failoverd import BUILD_FLOOR  # noqa: PLC0415
    from failoverd.clock.consensus import Budget, Sample, Verdict, judge  # noqa: PLC0415
    from failoverd.clock.sntp import query  # noqa: PLC0415
    from failoverd.clock.sources import adjtimex  # noqa: PLC0415
    from failoverd.ctl import render_clock  # noqa: PLC0415
    from failoverd.engine.events import ClockState  # noqa: PLC0415
    from failoverd.hostport import split_hostport  # noqa: PLC0415

    try:
        servers = [split_hostport(server, 123) for server in args.server]
    except ValueError as exc:
        print(f"failoverd: --server {exc}", file=sys.stderr)
        return EXIT_INVALID

    async def ask() -> list[Any]:
        best = []
        for host, port in servers:
            # Several exchanges a server, keep the one with the least delay (the RFC 5905 clock filter's idea).
            replies = [await query(host, port, timeout=args.timeout) for _ in range(args.samples)]
            good = [r for r in replies if r.ok]
            best.append(min(good, key=lambda r: r.delay) if good else replies[-1])
        return best

    replies = asyncio.run(ask())
    samples = [Sample(r.server, r.server, r.offset, r.half_width, r.mono, None, r.stratum) for r in replies if r.ok]
    kernel = adjtimex()
    budget = Budget(args.max_error, args.panic, 100e-6, min(args.min_classes, len(args.server)), 1, BUILD_FLOOR)
    verdict, c = judge(
        Verdict(),
        now=time.monotonic(),
        wall=time.time(),
        samples=samples,
        steps=[],
        b=budget,
        kernel_synced=bool(kernel and kernel.synced),
    )
    false = {s for s, _ in c.falsetickers}
    report = {
        "state": verdict.state.value,
        "bound_s": verdict.bound,
        "evidence": list(verdict.evidence),
        "sources": [
            {
                "server": r.server,
                "class": r.server,
                "uplink": None,
                "age_s": 0.0,
                **(
                    {
                        "state": "falseticker" if r.server in false else "agrees",
                        "offset_s": r.offset,
                        "delay_s": r.delay,
                        "stratum": r.stratum,
                    }
                    if r.ok
                    else {"state": "no answer", "error": r.error}
                ),
            }
            for r in replies
        ],
        "kernel": None if kernel is None else {"synced": kernel.synced, "maxerror_s": kernel.maxerror},
    }
    print(json.dumps(report, indent=1) if args.json else render_clock(report, sys.stdout.isatty()))
    return {ClockState.SANE: 0, ClockState.SUSPECT: 1, ClockState.HOLDOVER: 1}.get(verdict.state, 2)


def cmd_report(args: argparse.Namespace) -> int:
    """The incident report from a state dir's history file, with no daemon (a gateway back on the bench)."""
    import time  # noqa: PLC0415

    from failoverd import report  # noqa: PLC0415
    from failoverd.observe.journal import Journal  # noqa: PLC0415

    path = Path(args.state_dir) / Journal.FILE
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        print(f"failoverd report: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    now = time.time()
    try:
        since, until = report.parse_when(args.since, now), report.parse_when(args.until, now)
        metered: tuple[str, ...] = ()
        site = None
        if args.policy:
            policy = load_policy(Path(args.policy))
            metered, site = tuple(n for n, u in policy.uplinks.items() if u.metered), policy.site
        inc = report.build(report.select(records, since, until), since, until, site=site, metered=metered)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    except ValueError as exc:
        print(f"failoverd report: {exc}", file=sys.stderr)
        return EXIT_INVALID
    text = report.markdown(inc)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    if args.plot:
        report.plot(inc, args.plot)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="failoverd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="validate policy files and summarise what they will do")
    p.add_argument("policy", nargs="+")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.add_argument(
        "--user",
        default="failoverd",
        help="run as root, warn of the files this user (the unit's User=) cannot read; '' to skip",
    )
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("simulate", help="replay a timeline of events through the engine")
    p.add_argument("policy")
    p.add_argument("--events", required=True, metavar="TIMELINE.yaml")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.add_argument("-v", "--verbose", action="store_true", help="also uplink changes, alarms, standby, conntrack")
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("run", help="run the daemon: probe, decide, program the kernel")
    p.add_argument("--policy", required=True)
    p.add_argument("--state-dir", default="/var/lib/failoverd", help="overrides and history survive restarts here")
    p.add_argument("--socket", help="control socket (default: the policy's control.socket)")
    p.add_argument("--netns", help="run inside this existing network namespace")
    p.add_argument(
        "--restore-on-exit",
        action="store_true",
        help="remove everything failoverd installed when stopped (default: fail-static, keep it)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-json", action="store_true", help="JSON log lines even on a terminal")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("probe", help="send each probe of a policy once and print the answers")
    p.add_argument("--policy", required=True)
    p.add_argument("--uplink", action="append", help="only this uplink (repeat)")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--netns", help="probe from inside this existing network namespace")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_probe)
    p = sub.add_parser("purge", help="remove every route, rule and nftables table failoverd owns")
    p.add_argument("--policy", required=True, help="for its ownership section")
    p.add_argument("--netns", help="inside this existing network namespace")
    p.set_defaults(func=cmd_purge)
    p = sub.add_parser("clock", help="check this machine's clock against NTP servers, once")
    p.add_argument("--server", action="append", required=True, help="HOST or HOST:PORT (repeat; 4 or more is best)")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--max-error", type=float, default=0.5)
    p.add_argument("--panic", type=float, default=1000.0)
    p.add_argument("--min-classes", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_clock)
    p = sub.add_parser("report", help="the incident report of a period, from a state dir's history (no daemon)")
    p.add_argument("state_dir", metavar="STATE_DIR", help="the daemon's --state-dir (history.jsonl)")
    p.add_argument("--since", default="24h", help="a span ago (2h), a Unix time or 2026-12-02T10:00 (UTC)")
    p.add_argument("--until", default="now")
    p.add_argument("--policy", help="the gateway's policy: its site and metered uplinks")
    p.add_argument("--out", metavar="FILE", help="write the Markdown here (default: print it)")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the period as a PNG")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
