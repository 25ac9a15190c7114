"""The benchmark results as markdown: tables side by side, and each target with met or missed."""

from __future__ import annotations

from typing import Any

FAST, EXAMPLE, BFD = "failoverd-fast", "failoverd-example", "frr-bfd"
# A peer's figures per family: IPv4 under "faults" (as in results from before IPv6 was measured), IPv6
# under "faults6".
KEYS = {"ipv4": "faults", "ipv6": "faults6"}
NAMES = {"ipv4": "IPv4", "ipv6": "IPv6"}


def families(fo: dict[str, Any]) -> list[str]:
    """The families a failover run measured: IPv4 alone in results from before the IPv6 stream."""
    return [f for f in KEYS if any(KEYS[f] in p for p in fo["peers"].values())]


def _columns(fo: dict[str, Any], faults: list[str]) -> list[tuple[str, str, str]]:
    """(fault, family, heading): each fault's IPv4 column with its IPv6 one beside it."""
    fams = families(fo)
    if fams == ["ipv4"]:
        return [(f, "ipv4", f) for f in faults]
    return [(f, fam, f"{f} {NAMES[fam]}") for f in faults for fam in fams]


def _get(peer: dict[str, Any], fault: str, family: str) -> dict[str, Any] | None:
    got: dict[str, Any] | None = peer.get(KEYS[family], {}).get(fault)
    return got


def _cell(f: dict[str, Any] | None) -> str:
    if f is None:
        return "–"
    if f["errors"] and not f["samples"]:
        return "error"
    o = f.get("outage_ms")
    never = f["runs"] - f["recovered"]
    if o is None:
        return "never"
    text = f"{o['median']:.0f} ({o['min']:.0f}–{o['max']:.0f})"
    if never:
        text += f", never in {never}/{f['runs']}"
    return text


def _median(f: dict[str, Any] | None, key: str) -> float | None:
    if f is None or f.get(key) is None:
        return None
    return float(f[key]["median"])


def _all_recovered(f: dict[str, Any] | None) -> bool:
    return f is not None and f["runs"] > 0 and f["recovered"] == f["runs"] and not f["errors"]


def failover_table(fo: dict[str, Any]) -> list[str]:
    peers: dict[str, Any] = fo["peers"]
    faults = [f for f in ("carrier", "dead", "beyond") if f in fo["faults"]]
    if not faults:
        return []
    cols = _columns(fo, faults)
    heads = " | ".join(h for _, _, h in cols)
    both = len(families(fo)) > 1
    lines = [
        f"Outage of the critical stream ({fo['rate_pps']:.0f} packets/s"
        + (", one of each family in the same run, hit by the same fault" if both else "")
        + f"), longest gap in ms: median (min–max) of {fo['runs']} runs; *never* = the stream did not return "
        "before the window closed.",
        "",
        f"| peer | {heads} |",
        "|---|" + "---|" * len(cols),
    ]
    for name, p in peers.items():
        lines.append(f"| {name} | " + " | ".join(_cell(_get(p, f, fam)) for f, fam, _ in cols) + " |")
    for mine in (FAST, EXAMPLE):
        if mine not in peers or BFD not in peers:
            continue
        cells = []
        for f, fam, _ in cols:
            a, b = _get(peers[mine], f, fam), _get(peers[BFD], f, fam)
            ma, mb = _median(a, "outage_ms"), _median(b, "outage_ms")
            if ma is not None and _all_recovered(b) and mb:
                cells.append(f"{ma / mb:.2f}")
            elif ma is not None:
                cells.append("FRR-BFD never fails over")
            else:
                cells.append("–")
        lines.append(f"| **{mine} / frr-bfd** | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"| peer, lost packets (median) | {heads} |", "|---|" + "---|" * len(cols)]
    for name, p in peers.items():
        cells = [f"{m:.0f}" if (m := _median(_get(p, f, fam), "lost")) is not None else "–" for f, fam, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def gray_table(fo: dict[str, Any]) -> list[str]:
    grays = [f for f in ("gray5", "gray20", "gray40") if f in fo["faults"]]
    if not grays:
        return []
    cols = [(g, fam, f"{g[4:]} % loss" + h[len(g) :]) for g, fam, h in _columns(fo, grays)]
    lines = [
        "Gray failure: random loss on the fiber, both ways, for 12 s. *moved* = time until the stream first",
        "arrived over another path; switches = path changes in the window (1 = moved and stayed); lost packets.",
        "",
        "| peer | " + " | ".join(h for _, _, h in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, p in fo["peers"].items():
        cells = []
        for g, fam, _ in cols:
            f = _get(p, g, fam)
            if f is None or not f["samples"]:
                cells.append("–")
                continue
            s = f["samples"][0]
            moved = "stayed" if s["moved_ms"] is None else f"moved {s['moved_ms']:.0f} ms"
            cells.append(f"{moved}, {s['switches']} sw, {s['lost']} lost")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def flap_table(fo: dict[str, Any]) -> list[str]:
    if "flap" not in fo["faults"]:
        return []
    fams = families(fo)
    tag = {fam: "" if len(fams) == 1 else f", {NAMES[fam]}" for fam in fams}
    lines = [
        "Flap storm: the fiber's carrier down 1 s, up 1 s, for a minute (30 falls).",
        "",
        "| peer | " + " | ".join(f"path switches{tag[f]} | lost packets{tag[f]}" for f in fams) + " |",
        "|---|" + "---|---|" * len(fams),
    ]
    for name, p in fo["peers"].items():
        cells = []
        for fam in fams:
            f = _get(p, "flap", fam)
            if f is None or not f["samples"]:
                cells += ["–", "–"]
                continue
            s = f["samples"][0]
            cells += [str(s["switches"]), str(s["lost"])]
        if any(c != "–" for c in cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def cost_table(c: dict[str, Any]) -> list[str]:
    lines = [
        f"failoverd's cost with {c['load']}:",
        "",
        "| phase | RSS MiB | CPU % of one core | probes completed/s |",
        "|---|---|---|---|",
    ]
    for ph in c["phases"]:
        lines.append(
            f"| {ph['phase']} | {ph['rss_mib']:.1f} | {ph['cpu_percent']:.2f} | {ph.get('probes_per_s', '–')} |"
        )
    if f := c.get("probe_floor"):
        lines.append(f"| *floor: the probe sessions alone* | – | {f['cpu_percent']:.2f} | {f['probes_per_s']} |")
    return lines


def reconcile_table(r: dict[str, Any]) -> list[str]:
    lines = [
        "failoverd's `Kernel` making the kernel hold N owned default routes (one per table), each step",
        "checked against `ip route`; `ip -batch` (iproute2, C) doing the same install and switch is the",
        "kernel's floor.",
        "",
        "| owned routes | install (empty → N) | no-op full audit | switch all | remove all "
        "| ip -batch install | ip -batch switch all |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["sizes"]:
        lines.append(
            f"| {row['routes']:,} | {row['install_s']:.3f} s | {row['audit_s']:.3f} s | "
            f"{row['replace_s']:.3f} s | {row['purge_s']:.3f} s | "
            f"{row['ip_batch_install_s']:.3f} s | {row['ip_batch_replace_s']:.3f} s |"
        )
    return lines


def _ms(s: float | None) -> str:
    return "–" if s is None else f"{s * 1000:.0f}"


def fleet_table(f: dict[str, Any]) -> list[str]:
    if "error" in f:
        return [f"The fleet benchmark failed: {f['error']}"]
    lines = [
        f"N simulated gateways (failoverd's own MQTT code, the real engine, TLS and passwords) in "
        f"{f['per_worker']:,}-gateway worker processes; {f['rounds']} signed fleet commands at each size "
        "(failover, release), times from the operator's publish over every site of every round. The N gateways",
        "share this machine's CPUs: the tail includes N × one gateway's CPU per command done in turn.",
        "",
        "| topology | gateways | reached p50 / p99 / max ms | answered p50 / p99 / max ms | all answered "
        "| fleet status s (3 runs) | failoverctl --fleet command s | sessions up s | broker RSS MiB "
        "| broker CPU ms/command | gateway RSS KiB | gateway CPU ms/command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in f["runs"]:
        reach, answer = r["reach_s"], r["answer_s"]
        status = " / ".join(
            f"{s['s']:.2f}" + ("" if s["complete"] and s["summary"]["sites"] == r["sites"] else " INCOMPLETE")
            for s in r["status"]
        )
        # Results from before broker_rss_mib kept the broker's RSS in KiB.
        mib = r.get("broker_rss_mib") or {n: v / 1024 for n, v in r["broker_rss_kib"].items()}
        rss = ", ".join(f"{n} {v:.0f}" for n, v in mib.items())
        cpu = ", ".join(f"{n} {v:.0f}" for n, v in r["broker_cpu_ms_per_command"].items())
        c = r.get("failoverctl_command")
        ctl = "–" if c is None else f"{c['s']:.2f}" + ("" if c["ok"] == r["sites"] else f" ({c['ok']} ok)")
        lines.append(
            f"| {r['topology']} | {r['sites']:,} | {_ms(reach['p50'])} / {_ms(reach['p99'])} / {_ms(reach['max'])} "
            f"| {_ms(answer['p50'])} / {_ms(answer['p99'])} / {_ms(answer['max'])} "
            f"| {'yes' if r['answered_all'] else 'NO'} | {status} | {ctl} | {r['connect_s']:.1f} | {rss} | {cpu} "
            f"| {r['gateway_rss_kib']:.0f} | {r['gateway_cpu_ms_per_command']:.2f} |"
        )
    return lines


def targets(doc: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met?); None where this run did not measure it."""
    out: list[tuple[str, str, bool | None]] = []
    fo = doc.get("failover", {}).get("peers", {})
    for fam in families(doc["failover"]) if fo else []:
        # The same targets for the IPv6 stream, with the IPv6 figures of FRR as the yardstick.
        on = "" if fam == "ipv4" else " (IPv6)"
        fast6 = fo.get(FAST, {}).get(KEYS[fam], {})
        bfd6 = fo.get(BFD, {}).get(KEYS[fam], {})
        if "carrier" in fast6:
            m = _median(fast6["carrier"], "outage_ms")
            shown = f"{m} ms" if m is not None else "never"
            out.append((f"carrier loss{on}: outage ≤ 10 ms", shown, m is not None and m <= 10))
        if "dead" in fast6 and "dead" in bfd6:
            a, b = _median(fast6["dead"], "outage_ms"), _median(bfd6["dead"], "outage_ms")
            ok = a is not None and b is not None and a <= b
            out.append((f"ISP router dead{on}: failoverd-fast / FRR-BFD ≤ 1.0", f"{a} / {b} ms", ok))
        if "beyond" in fast6:
            m = _median(fast6["beyond"], "outage_ms")
            shown = f"{m} ms" if m is not None else "never"
            out.append((f"blackhole beyond the ISP{on}: ≤ 300 ms", shown, m is not None and m <= 300))
    fast = fo.get(FAST, {}).get("faults", {})
    bfd = fo.get(BFD, {}).get("faults", {})
    flap_fast = fast.get("flap", {}).get("samples", [])
    flap_bfd = bfd.get("flap", {}).get("samples", [])
    if flap_fast:
        allowed = doc["failover"].get("flap_allowed_switches", {}).get("failoverd-fast")
        sw = flap_fast[0]["switches"]
        out.append(
            (f"flap storm: switches ≤ what damping allows ({allowed})", str(sw), allowed is not None and sw <= allowed)
        )
        if flap_bfd:
            a, b = flap_fast[0]["lost"], flap_bfd[0]["lost"]
            out.append(("flap storm: fewer lost packets than FRR-BFD", f"{a} vs {b}", a < b))
    c = doc.get("cost")
    if c:
        rss = max(ph["rss_mib"] for ph in c["phases"])
        cpu = max(ph["cpu_percent"] for ph in c["phases"])
        out.append(("RSS ≤ 60 MiB", f"{rss:.1f} MiB", rss <= 60))
        out.append(("CPU ≤ 2 % of one core", f"{cpu:.2f} %", cpu <= 2))
    r = doc.get("reconcile")
    if r:
        big = max(r["sizes"], key=lambda row: row["routes"])
        t = big["install_s"]
        out.append((f"{big['routes']:,} routes reconciled (empty → N) ≤ 1 s", f"{t:.3f} s", t <= 1.0))
        a = big["audit_s"]
        out.append((f"{big['routes']:,} routes audited (full dump, nothing to do) ≤ 1 s", f"{a:.3f} s", a <= 1.0))
    for r in doc.get("fleet", {}).get("runs", []):
        where = "one broker" if r["topology"] == "single" else "a two-level bridge"
        if r["sites"] == 1000:
            p99 = r["answer_s"]["p99"]
            met = p99 is not None and p99 <= 2.0 and r["answered_all"]
            out.append((f"1,000 gateways commanded and answered on {where}: p99 ≤ 2 s", f"{_ms(p99)} ms", met))
        if r["sites"] == 5000:
            worst = max(s["s"] for s in r["status"])
            met = worst <= 5.0 and all(s["complete"] and s["summary"]["sites"] == 5000 for s in r["status"])
            out.append((f"status of 5,000 gateways collected on {where}: ≤ 5 s", f"{worst:.2f} s (worst of 3)", met))
    return out


def markdown(doc: dict[str, Any]) -> str:
    m = doc["meta"]
    lines = [
        "# failoverd benchmarks",
        "",
        f"`{m['command']}` — {m['started']} to {m.get('finished', '?')}; "
        f"Linux {m['host']['kernel']}, Python {m['host']['python']}, {m['host']['cpus']} CPUs.",
        "",
    ]
    fo = doc.get("failover")
    if fo:
        lines += ["## Failover time", ""]
        for name, p in fo["peers"].items():
            lines.append(f"- **{name}**: {p['label']}")
        lines.append("")
        lines += [*failover_table(fo), ""]
        g = gray_table(fo)
        if g:
            lines += ["## Gray failure", "", *g, ""]
        fl = flap_table(fo)
        if fl:
            lines += ["## Flap storm", "", *fl, ""]
    if "cost" in doc:
        lines += ["## Cost", "", *cost_table(doc["cost"]), ""]
    if "reconcile" in doc:
        lines += ["## Reconcile", "", *reconcile_table(doc["reconcile"]), ""]
    if "fleet" in doc:
        lines += ["## Fleet control", "", *fleet_table(doc["fleet"]), ""]
    if "engine" in doc:
        e = doc["engine"]
        lines += [
            "## Engine",
            "",
            f"{e['events_per_s']:,} decisions/s ({e['us_per_event']} µs per probe result, one step each) on "
            f"{e['policy']}"
            + (
                f"; {e['batched_us_per_probe']} µs per probe result when the answers of one instant share a step"
                if "batched_us_per_probe" in e
                else ""
            )
            + (
                f"; {e['held_us_per_probe']} µs when answers are held up to {e['held_s'] * 1000:.0f} ms, as the"
                " daemon feeds them (losses go at once)."
                if "held_us_per_probe" in e
                else "."
            ),
            "",
        ]
    t = targets(doc)
    if t:
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        for what, measured, ok in t:
            lines.append(f"| {what} | {measured} | {'yes' if ok else 'NO'} |")
        lines.append("")
    return "\n".join(lines)
