"""What runs on the lab gateway to move traffic off a failed primary: failoverd and its peers.

Every peer gets the same lab, the same critical streams (dispatch → 198.19.1.10 and, over IPv6,
2001:db8:10::10 → 2001:db8:19:1::10) and the same faults on the fiber. `start()` sets it up for both
families, `ready()` says the fiber carries each measured family's stream and the alternate (carrier A)
is ready to take it, `stop()` removes every trace so that the next peer starts clean.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.frr import Frr
from failoverd.ctl import Client
from lab.netns import LabError, Topology
from lab.scenario import PY, launch_failoverd
from lab.topology import ROOT

FAMILIES = ("ipv4", "ipv6")


@dataclass(frozen=True)
class Plan:
    """One family's side of the bench: the stream's ends, the internet's prefix, the two next hops."""

    server: str
    source: str  # the dispatch host
    prefix: str
    primary: tuple[str, str]  # (interface, next hop)
    alternate: tuple[str, str]

    @property
    def ip(self) -> tuple[str, ...]:
        return ("ip", "-6") if ":" in self.server else ("ip",)


PLANS = {
    "ipv4": Plan(
        server="198.19.1.10",
        source="198.18.10.10",
        prefix="198.19.0.0/16",
        primary=("fiber0", "198.18.1.1"),
        alternate=("mob1", "198.18.2.1"),
    ),
    "ipv6": Plan(
        server="2001:db8:19:1::10",
        source="2001:db8:10::10",
        prefix="2001:db8:19::/48",
        primary=("fiber0", "2001:db8:1::1"),
        alternate=("mob1", "2001:db8:2::1"),
    ),
}


def route_dev(topo: Topology, family: str = "ipv4") -> str | None:
    """The interface the gateway sends one family's critical stream out of (rules and tables included)."""
    p = PLANS[family]
    out = topo.sh("gw", *p.ip, "-j", "route", "get", p.server, "from", p.source, "iif", "lan0", check=False)
    try:
        got = json.loads(out.stdout or "[]")
    except ValueError:
        return None
    return str(got[0].get("dev")) if got else None


@dataclass
class Peer:
    name: str
    label: str
    topo: Topology

    def start(self) -> None:
        raise NotImplementedError

    def ready(self) -> bool:
        return all(route_dev(self.topo, f) == PLANS[f].primary[0] for f in FAMILIES)

    def before_run(self) -> None:
        """Called before each measured run, once the faults of the last one are cleared."""

    def stop(self) -> None:
        raise NotImplementedError


@dataclass
class Static(Peer):
    """One static route via the fiber: no failover at all (the baseline of what an outage costs)."""

    def start(self) -> None:
        for p in PLANS.values():
            self.topo.sh("gw", *p.ip, "route", "add", p.prefix, "via", p.primary[1], "dev", p.primary[0])

    def stop(self) -> None:
        for p in PLANS.values():
            self.topo.sh("gw", *p.ip, "route", "del", p.prefix, check=False)


@dataclass
class KernelMetrics(Peer):
    """Two kernel routes with metrics; the kernel skips a route whose link has no carrier
    (ignore_routes_with_linkdown), which is the floor for carrier loss and blind to everything else."""

    def start(self) -> None:
        for family, p in PLANS.items():
            self.topo.sh("gw", "sysctl", "-qw", f"net.{family}.conf.all.ignore_routes_with_linkdown=1")
            for (dev, via), metric in ((p.primary, "10"), (p.alternate, "20")):
                self.topo.sh("gw", *p.ip, "route", "add", p.prefix, "via", via, "dev", dev, "metric", metric)

    def stop(self) -> None:
        for family, p in PLANS.items():
            for _ in range(2):
                self.topo.sh("gw", *p.ip, "route", "del", p.prefix, check=False)
            self.topo.sh("gw", "sysctl", "-qw", f"net.{family}.conf.all.ignore_routes_with_linkdown=0")


@dataclass
class FrrPeer(Peer):
    bfd: bool = True
    frr: Frr | None = None

    def start(self) -> None:
        self.frr = Frr(self.topo, bfd=self.bfd)
        self.frr.start()

    def ready(self) -> bool:
        return self.frr is not None and self.frr.established() and super().ready()

    def stop(self) -> None:
        if self.frr is not None:
            self.frr.stop()


@dataclass
class Failoverd(Peer):
    """failoverd with a policy. Each measured run starts a fresh daemon: flap damping would otherwise
    (rightly) hold the primary back after the bench's own run-after-run faults; the flap storm is one
    run, where damping is the point."""

    policy: Path = ROOT / "policies" / "lab.yaml"
    out: Path = Path("/run/fo-bench/failoverd")
    daemon: subprocess.Popen[bytes] | None = None
    fresh_each_run: bool = True
    _client: Client | None = field(default=None, repr=False)

    @property
    def socket(self) -> str:
        return str(self.out / "failoverd.sock")

    def _purge(self) -> None:
        cmd = [PY, "-m", "failoverd.cli", "purge", "--policy", str(self.policy), "--netns", self.topo.ns("gw")]
        subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True, timeout=30)

    def _launch(self) -> None:
        self._halt()
        shutil.rmtree(self.out / "state", ignore_errors=True)
        self.daemon = launch_failoverd(self.topo.ns("gw"), self.policy, self.out)
        self._client = Client(self.socket, timeout=2)

    def _halt(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.daemon = None

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self._purge()
        self._launch()

    def before_run(self) -> None:
        if self.fresh_each_run:
            self._launch()

    def status(self) -> dict[str, object]:
        if self._client is None:
            raise LabError("failoverd is not running")
        try:
            st = self._client.request({"cmd": "status"})
        except OSError:
            return {}
        return st if isinstance(st, dict) else {}

    def ready(self) -> bool:
        """critical on the fiber and carrier A usable, in each family: to the engine the IPv6 side of
        a dual-stack uplink or class is NAME/v6."""
        st = self.status()
        usable = {u["name"]: u.get("usable") for u in st.get("uplinks", [])}  # type: ignore[attr-defined]
        cls = {c["name"]: c.get("uplink") for c in st.get("classes", [])}  # type: ignore[attr-defined]
        return all(
            cls.get(f"critical{v}") == f"fiber{v}" and usable.get(f"fiber{v}") is True
            and usable.get(f"mobile-a{v}") is True
            for v in ("", "/v6")
        )  # fmt: skip

    def stop(self) -> None:
        self._halt()
        self._purge()
