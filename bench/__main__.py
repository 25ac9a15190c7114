"""`python -m bench NAME`: failoverd's benchmarks, separate from the tests (see bench/README.md)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import failover, fleet, report

if TYPE_CHECKING:
    from lab.topology import Lab

RESULTS = Path(__file__).resolve().parent / "results"
USAGE = """usage: python -m bench COMMAND [options]

  all        everything below in one run; writes bench/results/<stamp>.json, latest.json and latest.md
  failover   failover time, gray failure and flap storm for failoverd and its peers (needs root)
  cost       failoverd's RSS and CPU at 4 uplinks x 2 targets x 20 probes/s, idle and in a failover (root)
  reconcile  time to reconcile 1,000 and 10,000 owned routes (root)
  fleet      signed fleet commands and fleet status over 100, 1,000 and 5,000 simulated gateways on
             one mosquitto and on a two-level bridge (root)
  engine     the pure engine's decisions per second
  intake     what a request on the MQTT command topic costs before it is refused or run
  report     re-render the markdown of a results file (default bench/results/latest.json -> latest.md)
"""


def _lab() -> Lab:
    from lab.topology import Lab, load  # noqa: PLC0415

    if os.geteuid() != 0:
        raise SystemExit("the lab benchmarks need root (network namespaces); run with sudo")
    lab = Lab(load())
    print("bringing the lab up (namespaces fo-failoverd-*)", flush=True)
    lab.up()
    return lab


def _csv(text: str, allowed: dict[str, str]) -> list[str]:
    got = [x for x in text.split(",") if x]
    bad = [x for x in got if x not in allowed]
    if bad:
        raise SystemExit(f"unknown: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return got


def meta(argv: list[str]) -> dict[str, Any]:
    return {
        "command": "python -m bench " + " ".join(argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"kernel": platform.release(), "python": platform.python_version(), "cpus": os.cpu_count()},
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("all", "failover", "cost", "reconcile", "fleet", "engine", "intake", "report"):
        print(USAGE, file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "report":
        src = Path(rest[0]) if rest else RESULTS / "latest.json"
        text = report.markdown(json.loads(src.read_text()))
        if src.resolve() == (RESULTS / "latest.json").resolve():
            (RESULTS / "latest.md").write_text(text)
        print(text)
        return 0
    if cmd == "engine":
        from bench import engine  # noqa: PLC0415

        return engine.main(rest)
    if cmd == "intake":
        from bench import intake  # noqa: PLC0415

        return intake.main(rest)
    # The fleet's options are bench/fleet.py's own (its parser is also that of `python -m bench.fleet`).
    parents = [fleet.parser(add_help=False)] if cmd in ("all", "fleet") else []
    ap = argparse.ArgumentParser(prog=f"python -m bench {cmd}", parents=parents)
    if cmd in ("all", "failover"):
        ap.add_argument("--runs", type=int, default=5, help="runs per peer and fault (default 5)")
        ap.add_argument("--peers", default=",".join(failover.PEERS))
        ap.add_argument("--faults", default=",".join(failover.FAULTS))
    ap.add_argument("--out", type=Path, help="results JSON (default: bench/results/<stamp>.json, latest.*)")
    args = ap.parse_args(rest)
    doc: dict[str, Any] = {"meta": meta(argv)}
    work = Path("/run/fo-bench")
    lab: Lab | None = None
    try:
        if cmd in ("all", "failover", "cost"):
            lab = _lab()
        if cmd in ("all", "failover"):
            peers = _csv(args.peers, failover.PEERS)
            faults = _csv(args.faults, failover.FAULTS)
            assert lab is not None
            doc["failover"] = {
                "runs": args.runs,
                "rate_pps": failover.RATE,
                "faults": {f: failover.FAULTS[f] for f in faults},
                "peers": failover.run(lab, peers, faults, args.runs, work),
            }
            if "flap" in faults:
                doc["failover"]["flap_allowed_switches"] = {
                    p: failover.allowed_switches(failover.POLICIES[p]) for p in peers if p in failover.POLICIES
                }
        if cmd in ("all", "cost"):
            from bench import cost  # noqa: PLC0415

            assert lab is not None
            doc["cost"] = cost.run(lab, work / "cost")
        if cmd in ("all", "reconcile"):
            from bench import reconcile  # noqa: PLC0415

            doc["reconcile"] = reconcile.run()
        if cmd == "all":
            from bench import engine  # noqa: PLC0415

            doc["engine"] = engine.measure(engine.ROOT / "policies" / "lab.yaml", 60.0)
    finally:
        if lab is not None:
            lab.down()
    if cmd in ("all", "fleet"):  # after the lab is down: the simulated fleet wants every CPU
        sizes = ["--sizes", args.sizes, "--topologies", args.topologies, "--rounds", str(args.rounds)]
        try:
            doc["fleet"] = fleet.in_namespace(sizes)
        except RuntimeError as exc:  # the rest of a long `all` run is kept, and the failure shown with it
            doc["fleet"] = {"error": str(exc)}
    doc["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = report.markdown(doc)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    if args.out is not None:
        args.out.write_text(json.dumps(doc, indent=1))
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        (RESULTS / f"{stamp}-{cmd}.json").write_text(json.dumps(doc, indent=1))
        if cmd == "all":
            (RESULTS / "latest.json").write_text(json.dumps(doc, indent=1))
            (RESULTS / "latest.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
