"""Failover time, flap storm and gray failure: failoverd and its peers, one after another, in one lab.

`python -m bench failover [--runs 5] [--peers ...] [--faults ...]`

For every peer and fault: two critical UDP streams at 1000 packets/s each, one per family, from the
dispatch host to its server cross the gateway side by side; the fault hits the fiber; the receivers
(which name each packet's path by the interface it arrived on, so NAT cannot blur it) measure per
family the longest gap, the packets lost, when the stream first arrived over the alternate, and how
often its path changed. Faults are cleared and the peer given time to return to the fiber before the
next run.

Both families in one run, not a second pass per peer: each run's fault then strikes the IPv4 and the
IPv6 stream at the same instant, through the same daemon (or FRR) instance at the same phase of its
probe or BFD timers, so a difference between the columns is the peer's handling of the family and
not the luck of two runs; it also keeps the bench's length. The cost is twice the packets on the
machine, the same for every peer. Every fault is written in nftables' `inet` family (or is a carrier
loss), so it hits IPv6 as it hits IPv4.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.peers import FAMILIES, Failoverd, FrrPeer, KernelMetrics, Peer, Static
from lab.netns import LabError, Topology, wait_for
from lab.scenario import PY
from lab.topology import ROOT, Lab

ISP = "isp-fiber"  # the primary's ISP router; its port toward the gateway is down0
PATHS = {"isp-fiber": "fiber", "mno-a": "mobile-a", "mno-b": "mobile-b", "mno-c": "mobile-c", "sat-gs": "sat"}
RATE = 1000.0
# Per family: the receiver's bind address and the sender's destination (the same server, one port each).
STREAMS = {"ipv4": "198.19.1.10:9000", "ipv6": "[2001:db8:19:1::10]:9000"}
FAULTS: dict[str, str] = {
    "carrier": "carrier loss on the fiber (the ISP's port goes dark)",
    "dead": "the fiber ISP's router dead: drops everything, link up",
    "beyond": "blackhole beyond the ISP: it answers its neighbours (ARP, BGP, BFD) but forwards nothing",
    "gray5": "5 % loss on the fiber, both ways",
    "gray20": "20 % loss on the fiber, both ways",
    "gray40": "40 % loss on the fiber, both ways",
    "flap": "the fiber flaps: carrier down 1 s, up 1 s, for a minute",
}
PEERS: dict[str, str] = {
    "static": "static route via the fiber (no failover)",
    "kernel-metrics": "two kernel routes with metrics, ignore_routes_with_linkdown",
    "frr-bfd": "FRR 8.4 BGP + BFD 50 ms × 3",
    "frr-bgp": "FRR 8.4 BGP, timers 3 s / 9 s",
    "failoverd-fast": "failoverd, bench/policies/fast.yaml (udp-echo every 50 ms, 3 lost, per family)",
    "failoverd-example": "failoverd, policies/lab-v6.yaml (the lab's dual-stack example policy)",
}


POLICIES = {
    "failoverd-fast": ROOT / "bench" / "policies" / "fast.yaml",
    # The dual-stack twin of policies/lab.yaml: the same IPv4 uplinks, probes and health, plus IPv6.
    "failoverd-example": ROOT / "policies" / "lab-v6.yaml",
}


def make_peer(name: str, topo: Topology, out: Path) -> Peer:
    label = PEERS[name]
    match name:
        case "static":
            return Static(name, label, topo)
        case "kernel-metrics":
            return KernelMetrics(name, label, topo)
        case "frr-bfd":
            return FrrPeer(name, label, topo, bfd=True)
        case "frr-bgp":
            return FrrPeer(name, label, topo, bfd=False)
        case "failoverd-fast" | "failoverd-example":
            return Failoverd(name, label, topo, policy=POLICIES[name], out=out / name)
    raise LabError(f"unknown peer {name!r} (peers: {', '.join(PEERS)})")


@dataclass
class Sample:
    """One run of one fault against one peer."""

    recovered: bool  # the stream flowed again before the window ended
    outage_ms: float | None  # longest gap between consecutive packets; None when it never recovered
    lost: int
    moved_ms: float | None  # fault → first packet over another path
    switches: int  # path changes after the fault
    paths: dict[str, int] = field(default_factory=dict)
    error: str | None = None


FLAP_START = 10.0


def allowed_switches(policy: Path, storm: float = 61.0, window: float = 64.0) -> int:
    """How often the policy lets the critical class change path in the bench's flap storm: the same
    storm (carrier down 1 s, up 1 s) replayed through failoverd's own engine in the simulator."""
    from failoverd.policy import load_policy  # noqa: PLC0415
    from failoverd.simulate import Step, Timeline, simulate  # noqa: PLC0415

    pol = load_policy(policy)
    storm_step = Step.model_validate({"at": FLAP_START, "uplink": "fiber", "flap": 2.0, "until": FLAP_START + storm})
    records = simulate(pol, Timeline(duration=FLAP_START + window, events=[storm_step]))
    return sum(
        1
        for r in records
        if r["kind"] == "decision" and r["class"] == "critical" and FLAP_START <= r["mono"] <= FLAP_START + window
    )


def window_for(peer: str, fault: str) -> float:
    """How long to watch after the fault: long enough for each peer's own timers to act."""
    if fault == "flap":
        return 64.0
    if fault.startswith("gray"):
        return 12.0
    if peer == "frr-bgp" and fault in ("dead", "beyond"):
        return 14.0  # hold time 9 s after the last keepalive, plus slack
    return 4.0


class Faults:
    """Faults on the primary, all at the fiber ISP's router (isp-fiber), so the gateway is untouched.
    The tables are of nftables' `inet` family, so every fault strikes IPv4 and IPv6 alike; `dead` also
    drops neighbour discovery (ICMPv6), which ARP, outside the `inet` hooks, escapes: no difference to
    the streams, both of which it drops."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.flapper: threading.Thread | None = None
        self.stop_flap = threading.Event()

    def apply(self, fault: str, duration: float) -> None:
        match fault:
            case "carrier":
                self.link(up=False)
            case "dead":
                self.table(
                    "chain pre { type filter hook prerouting priority -300; drop; }\n"
                    "chain out { type filter hook output priority -300; drop; }"
                )
            case "beyond":
                self.table("chain forward_drop { type filter hook forward priority -10; drop; }")
            case "flap":
                self.stop_flap.clear()
                self.flapper = threading.Thread(target=self._flap, args=(duration,), daemon=True)
                self.flapper.start()
            case _ if fault.startswith("gray"):
                pct = int(fault[4:])
                self.table(
                    "chain pre { type filter hook prerouting priority -300;\n"
                    f'  iifname "down0" numgen random mod 100 < {pct} drop; }}\n'
                    "chain post { type filter hook postrouting priority 300;\n"
                    f'  oifname "down0" numgen random mod 100 < {pct} drop; }}'
                )
            case _:
                raise LabError(f"unknown fault {fault!r}")

    def _flap(self, duration: float) -> None:
        end = time.monotonic() + duration
        up = True
        while not self.stop_flap.is_set() and time.monotonic() < end:
            up = not up
            self.link(up=up)
            self.stop_flap.wait(1.0)
        self.link(up=True)

    def link(self, up: bool) -> None:
        self.topo.sh(ISP, "ip", "link", "set", "dev", "down0", "up" if up else "down")

    def table(self, chains: str) -> None:
        self.topo.nft(ISP, f"table inet bench_fault {{\n{chains}\n}}\n")

    def clear(self) -> None:
        self.stop_flap.set()
        if self.flapper is not None:
            self.flapper.join(5)
            self.flapper = None
        self.topo.sh(ISP, "nft", "delete", "table", "inet", "bench_fault", check=False)
        self.link(up=True)


def measure_run(topo: Topology, faults: Faults, fault: str, window: float, out: Path) -> dict[str, Sample]:
    """One run: both families' streams for 1.5 s, inject, watch `window` seconds, stop; what each
    receiver saw."""
    logs = {f: (out / f"recv-{f}.json", out / f"send-{f}.json") for f in FAMILIES}
    for pair in logs.values():
        for path in pair:
            path.unlink(missing_ok=True)
    recv = [PY, "-m", "lab.traffic", "recv", "--by-iface", "--bind"]
    recvs = [topo.spawn("inet", [*recv, STREAMS[f], "--out", str(logs[f][0])], cwd=ROOT) for f in FAMILIES]
    time.sleep(0.3)
    send = [PY, "-m", "lab.traffic", "send", "--rate", str(RATE), "--dst"]
    sends = [topo.spawn("dispatch", [*send, STREAMS[f]], log=logs[f][1], cwd=ROOT) for f in FAMILIES]
    try:
        time.sleep(1.5)
        t_fault = time.monotonic()
        faults.apply(fault, window - 3 if fault == "flap" else window)
        time.sleep(window)
        t_end = time.monotonic()
    finally:
        stop_together(topo, sends)
        time.sleep(0.2)
        stop_together(topo, recvs)
        faults.clear()
    return {f: judge(fault, *logs[f], t_fault, t_end) for f in FAMILIES}


def stop_together(topo: Topology, procs: list[subprocess.Popen[bytes]]) -> None:
    """Signal every one before waiting for any: stopped one after the other, the second stream would run
    on for the first one's exit and count that tail as lost where its path is still broken."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        topo.stop(p)


def judge(fault: str, result: Path, sent_log: Path, t_fault: float, t_end: float) -> Sample:
    """One family's stream in one run, from its receiver's summary and its sender's count."""
    try:
        summary: dict[str, Any] = json.loads(result.read_text())
        sent = int(json.loads(sent_log.read_text().strip().splitlines()[-1])["sent"])
    except (OSError, ValueError, IndexError, KeyError) as exc:
        return Sample(False, None, 0, None, 0, error=f"no traffic result: {exc}")
    switches = [s for s in summary.get("switches", []) if s["t"] >= t_fault]
    moved = next((s["t"] - t_fault for s in switches if s["to"] != "isp-fiber"), None)
    recovered = summary.get("last_t", 0.0) >= t_end - 0.3
    if fault in ("flap",) or fault.startswith("gray"):
        recovered = True  # the stream is judged by its losses and switches here, not by one gap
    return Sample(
        recovered=recovered,
        outage_ms=summary.get("max_gap_ms") if recovered else None,
        lost=max(0, sent - int(summary.get("received", 0))),
        moved_ms=round(moved * 1000, 1) if moved is not None else None,
        switches=len(switches),
        paths={PATHS.get(k, k): v for k, v in summary.get("by_source", {}).items()},
    )


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
        "stdev": round(statistics.stdev(values), 1) if len(values) > 1 else 0.0,
    }


def summarize(samples: list[Sample]) -> dict[str, Any]:
    ok = [s for s in samples if s.error is None]
    outages = [s.outage_ms for s in ok if s.outage_ms is not None]
    return {
        "runs": len(samples),
        "errors": [s.error for s in samples if s.error],
        "recovered": sum(1 for s in ok if s.recovered),
        "moved": sum(1 for s in ok if s.moved_ms is not None),
        "outage_ms": _stats(outages),
        "lost": _stats([float(s.lost) for s in ok]),
        "moved_ms": _stats([s.moved_ms for s in ok if s.moved_ms is not None]),
        "switches": _stats([float(s.switches) for s in ok]),
        "samples": [asdict(s) for s in samples],
    }


def run(
    lab: Lab,
    peers: list[str],
    faults: list[str],
    runs: int,
    out: Path,
    *,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    topo = lab.topo
    out.mkdir(parents=True, exist_ok=True)  # /run is empty after a boot
    f = Faults(topo)
    f.clear()
    results: dict[str, Any] = {}
    for name in peers:
        peer = make_peer(name, topo, out)
        progress(f"{name}: {peer.label}")
        # "faults" holds IPv4 as before (older results files read the same); "faults6" the IPv6 stream.
        per_fault: dict[str, dict[str, Any]] = {"ipv4": {}, "ipv6": {}}
        try:
            peer.start()
            for fault in faults:
                samples: dict[str, list[Sample]] = {fam: [] for fam in FAMILIES}
                n = 1 if fault == "flap" or fault.startswith("gray") else runs
                for i in range(n):
                    try:
                        peer.before_run()
                        wait_for(peer.ready, 90, interval=0.1, what=f"{name} to carry both streams on the fiber")
                        time.sleep(0.5)
                        got = measure_run(topo, f, fault, window_for(name, fault), out)
                    except LabError as exc:
                        got = {fam: Sample(False, None, 0, None, 0, error=str(exc)) for fam in FAMILIES}
                        f.clear()
                    for fam, s in got.items():
                        samples[fam].append(s)
                        shown = "never" if s.outage_ms is None else f"{s.outage_ms:.0f} ms"
                        progress(
                            f"  {fault:8} {fam} run {i + 1}/{n}: outage {shown}, lost {s.lost}, "
                            f"moved {'-' if s.moved_ms is None else f'{s.moved_ms:.0f} ms'}, switches {s.switches}"
                            + (f"  ERROR {s.error}" if s.error else "")
                        )
                for fam in FAMILIES:
                    per_fault[fam][fault] = summarize(samples[fam])
        finally:
            peer.stop()
            f.clear()
        results[name] = {"label": peer.label, "faults": per_fault["ipv4"], "faults6": per_fault["ipv6"]}
    return results
