"""`python -m lab`: bring the failoverd lab up on network namespaces, inject failures, run scenarios."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from lab import scenario as sc
from lab.netns import LabError
from lab.topology import CLAB, ROOT, Lab, load


def _need_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab creates network namespaces: run it as root (sudo)")


def _table(reports: list[dict[str, Any]]) -> str:
    lines = [f"{'SCENARIO':<24} {'RESULT':<7} {'OUTAGE':>9} {'LOST':>6}  PATH TAKEN BY critical (bulk)"]
    for r in reports:
        crit = r["classes"].get("critical", {})
        bulk = r["classes"].get("bulk", {})
        path = " > ".join(["start", *(c["to"] for c in crit.get("path_changes", []))])
        bpath = " > ".join(c["to"] for c in bulk.get("path_changes", [])) or "-"
        outage = f"{r['outage_ms']:.0f} ms" if r["outage_ms"] is not None else "-"
        lines.append(
            f"{r['scenario']:<24} {'pass' if r['passed'] else 'FAIL':<7} {outage:>9} "
            f"{r['lost_packets'] if r['lost_packets'] is not None else '-':>6}  {path} ({bpath})"
        )
    return "\n".join(lines)


def run_scenarios(lab: Lab, names: list[str], out_dir: Path, plot: bool, quiet: bool = False) -> list[dict[str, Any]]:
    reports = []
    for name in names:
        print(f"== scenario {name}")
        out = out_dir / Path(name).stem  # a scenario may be given as a file's path
        report = sc.run(lab, name, out, progress=(lambda s: None) if quiet else print)
        (out / "report.json").write_text(json.dumps(report, indent=1))
        for e in report["expectations"]:
            mark = "ok " if e["passed"] else "FAIL"
            limits = ", ".join(f"{k} {v}" for k, v in e.items() if k in ("max", "min", "equals", "uplinks", "uplink"))
            run = f" [{e['of']}]" if "of" in e else ""
            print(
                f"  [{mark}] {e['what']}{' of ' + e['class'] if e['class'] else ''}{run}: measured {e['measured']}"
                f" ({limits})"
            )
        v6 = report.get("families", {}).get("ipv6")
        if v6:  # a scenario with an IPv6 stream: each family's outage, one beside the other
            v4 = report["families"].get("ipv4", {})
            print(
                f"  critical per family: IPv4 {v4.get('outage_ms')} ms, lost {v4.get('lost_packets')}; "
                f"IPv6 {v6['outage_ms']} ms, lost {v6['lost_packets']}"
            )
        base = report.get("baseline")
        if base:
            print(
                f"  critical's outage: {report['outage_ms']} ms under {report['policy']}, "
                f"{base['outage_ms']} ms under {base['policy']} (baseline)"
            )
        if plot:
            from lab.plot import plot as draw  # noqa: PLC0415

            report["plot"] = str(draw(report, out / "plot.png"))
            if (out / "incident.json").exists():  # the incident report's own picture of the period
                from failoverd import report as incident  # noqa: PLC0415

                reply = json.loads((out / "incident.json").read_text())
                inc = incident.build(reply["records"], reply["since"], reply["until"], site=reply.get("site"))
                incident.plot(inc, out / "incident.png")
                print(f"  incident report: {out / 'incident.md'} and incident.png")
            if base:
                from lab.plot import compare  # noqa: PLC0415

                base["plot"] = str(draw(base["report"], out / "plot-baseline.png"))
                report["compare"] = str(compare(report, out / "plot-compare.png"))
                print(f"  outage against the baseline: {report['compare']}")
        reports.append(report)
    return reports


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    ap.add_argument("--topology", type=Path, default=CLAB)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="create the namespaces, links and services (replacing a previous run)")
    sub.add_parser("down", help="remove everything the lab created")
    sub.add_parser("status", help="which nodes exist and how many processes run in each")
    e = sub.add_parser("exec", help="run a command inside a node")
    e.add_argument("node")
    e.add_argument("argv", nargs=argparse.REMAINDER)
    s = sub.add_parser("scenario", help="run one scenario (the lab is brought up if it is not)")
    s.add_argument("name")
    s.add_argument("--json", type=Path, dest="json_out", help="write the report here")
    s.add_argument("--plot", type=Path, help="write a PNG here")
    s.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    sub.add_parser("scenarios", help="list the scenario catalog")
    g = sub.add_parser("dashboard", help="draw the Grafana dashboard's panels from Prometheus scraping a scenario")
    g.add_argument("name", nargs="?", default="carrier-outage-roaming")
    g.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    d = sub.add_parser("demo", help="up, fiber-cut and silent-blackhole with live progress, summary, down")
    d.add_argument("--out", type=Path, default=ROOT / "lab" / "out")
    d.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "scenarios":
            for name, path in sc.catalog().items():
                print(f"{name:<24} {sc.load_scenario(str(path)).title}")
            return 0
        lab = Lab(load(args.topology))
        if args.cmd == "status":
            rows = lab.status()
            for r in rows:
                print(
                    f"{r['node']:<10} {r['namespace']:<24} {'up' if r['up'] else 'down':<5} {r['processes']} processes"
                )
            return 0 if all(r["up"] for r in rows) else 1
        _need_root()
        if args.cmd == "up":
            t = time.monotonic()
            lab.up()
            print(
                f"lab {lab.spec.name} up: {len(lab.spec.nodes)} nodes, {len(lab.spec.links)} links "
                f"({time.monotonic() - t:.1f}s); `python -m lab down` removes it"
            )
            return 0
        if args.cmd == "down":
            gone = lab.down()
            print(f"removed {len(gone)} namespaces" if gone else "nothing to remove")
            return 0
        if args.cmd == "exec":
            return lab.exec(args.node, args.argv or ["sh"])
        if args.cmd == "scenario":
            was_up = lab.is_up
            if not was_up:
                lab.up()
            try:
                out = (args.json_out.parent if args.json_out else ROOT / "lab" / "out") / f"run-{args.name}"
                (report,) = run_scenarios(lab, [args.name], out.parent, plot=args.plot is not None)
                if args.plot:
                    Path(report["plot"]).replace(args.plot)
                    report["plot"] = str(args.plot)
                if args.json_out:
                    args.json_out.write_text(json.dumps(report, indent=1))
                print(_table([report]))
                return 0 if report["passed"] else 1
            finally:
                if not was_up and not args.keep:
                    lab.down()
        if args.cmd == "dashboard":
            from lab import dashboard  # noqa: PLC0415

            was_up = lab.is_up
            if not was_up:
                lab.up()
            try:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                path = dashboard.run(lab, args.name, args.out, ROOT / "lab" / "out" / "dashboard")
                print(f"dashboard panels drawn to {path}")
                return 0
            finally:
                if not was_up:
                    lab.down()
        if args.cmd == "demo":
            print("bringing the lab up (10 namespaces: gateway, LAN, 3 ISPs + satellite, internet, broker, operator)")
            lab.up()
            try:
                reports = run_scenarios(lab, ["fiber-cut", "silent-blackhole"], args.out, plot=True)
            finally:
                if not args.keep:
                    lab.down()
                    print("lab removed")
            print()
            print(_table(reports))
            for r in reports:
                print(f"plot: {r['plot']}   report: {Path(r['plot']).parent / 'report.json'}")
            return 0 if all(r["passed"] for r in reports) else 1
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
