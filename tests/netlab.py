"""A two-ISP gateway in network namespaces, with failoverd, probe targets and a traffic stream, for tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.netns import LabError, Topology, wait_for

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

POLICY = """
site: test-gw
uplinks:
  - name: fiber
    interface: fiber0
    next_hop: 198.18.1.1
    probes:
      - {kind: udp-echo, target: 198.19.0.1, interval: 50ms, timeout: 150ms}
      - {kind: udp-echo, target: 198.19.0.2, interval: 50ms, timeout: 150ms}
      - {kind: udp-echo, target: 198.19.0.3, interval: 50ms, timeout: 150ms}
    health:
      down: {consecutive_losses: 3, loss_percent: 40, window: 2s}
      up: {successes: 5, hold_down: 1s}
  - name: mobile
    interface: mob1
    next_hop: 198.18.2.1
    kind: cellular
    probes:
      - {kind: udp-echo, target: 198.19.0.1, interval: 100ms, timeout: 300ms}
      - {kind: icmp, target: 198.19.0.2, interval: 100ms, timeout: 300ms}
  - name: sat
    interface: sat0
    next_hop: 198.18.4.1
    kind: satellite
    metered: true
    admit: [critical]
    standby:
      mode: cold
      activate: {run: [ip, link, set, dev, sat0, up], timeout: 5s}
      deactivate: {run: [ip, link, set, dev, sat0, down], timeout: 5s}
      activation_time: 10s
      release_after: 3s
    probes: [{kind: udp-echo, target: 198.19.0.1, interval: 100ms, timeout: 500ms}]
classes:
  - name: critical
    match: [{src: [198.18.10.10/32]}]
    path: [fiber, mobile, sat]
    preempt_delay: PREEMPT
  - name: bulk
    path: [fiber, mobile]
    preempt_delay: 2s
control:
  max_override: 1h
clock:
  servers:                 # three honest chronyd and one liar, over both uplinks, four operators
    - {address: 198.19.0.123, uplink: fiber, operator: op-a}
    - {address: 198.19.0.124, uplink: mobile, operator: op-b}
    - {address: 198.19.0.125, uplink: fiber, operator: op-c}
    - {address: 198.19.0.126, uplink: mobile, operator: op-d}
  chrony: false
  interval: 1s
  drift_ppm: DRIFT
"""
TIME_SERVERS = ("198.19.0.123", "198.19.0.124", "198.19.0.125", "198.19.0.126")
FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"

FIBER_NAT = "198.18.1.2"
MOBILE_NAT = "198.18.2.2"
SAT_NAT = "198.18.4.2"
SERVER = "198.19.1.10"


def failoverctl(socket: str, *args: str) -> dict[str, Any]:
    """`failoverctl --socket SOCKET --json ARGS` on this machine: the daemon's JSON reply (also for a refusal,
    exit 1); LabError when failoverctl cannot reach the daemon (exit 3)."""
    r = subprocess.run(
        [PY, "-m", "failoverd.ctl", "--socket", socket, "--json", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=20,
        check=False,
    )
    if r.returncode == 3:
        raise LabError(r.stderr)
    reply: dict[str, Any] = json.loads(r.stdout)
    return reply


def failoverctl_in(topo: Topology, node: str, *args: str) -> tuple[int, Any]:
    """`failoverctl --json ARGS` run inside a node's namespace, as an operator elsewhere on the network runs it
    (over MQTT, say): its exit status and its JSON reply, or its stderr when it printed none."""
    r = subprocess.run(
        ["ip", "netns", "exec", topo.ns(node), PY, "-m", "failoverd.ctl", "--json", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else r.stderr


def wait_answering(daemon: subprocess.Popen[bytes], socket: str, log: Path, what: str) -> None:
    """Wait until the daemon answers `status` on its socket; LabError with its log's tail if it exits first."""

    def answers() -> bool:
        if daemon.poll() is not None:
            raise LabError(f"{what} exited with {daemon.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return bool(failoverctl(socket, "status")["ok"])
        except (LabError, json.JSONDecodeError):
            return False

    wait_for(answers, 15, what=f"{what} control socket (log: {log})")


@dataclass
class GatewayLab:
    """gw (failoverd) — isp1 (fiber) / isp2 (mobile) / isp3 (satellite, cold) — inet; lan behind gw."""

    tmp: Path
    preempt: str = "3s"
    drift_ppm: float = 100.0
    topo: Topology = field(init=False)
    daemon: subprocess.Popen[bytes] | None = None
    receiver: subprocess.Popen[bytes] | None = None
    sender: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.topo = Topology(f"fo-t{os.getpid() % 100000}{int(time.monotonic() * 1000) % 1000:03d}")
        self.policy_path = self.tmp / "policy.yaml"
        self.policy_path.write_text(POLICY.replace("PREEMPT", self.preempt).replace("DRIFT", str(self.drift_ppm)))
        self.time_servers: dict[str, subprocess.Popen[bytes]] = {}
        self.state_dir = self.tmp / "state"
        self.socket = str(self.tmp / "ctl.sock")
        self.log = self.tmp / "failoverd.log"

    # -- topology -----------------------------------------------------------------------------------
    def build(self) -> GatewayLab:
        t = self.topo
        try:
            for n in ("gw", "isp1", "isp2", "isp3", "inet", "lan"):
                t.add_node(n)
            t.link("gw", "lan0", "lan", "eth0")
            t.link("gw", "fiber0", "isp1", "down0")
            t.link("gw", "mob1", "isp2", "down0")
            t.link("isp1", "up0", "inet", "isp1")
            t.link("isp2", "up0", "inet", "isp2")
            t.link("gw", "sat0", "isp3", "down0")
            t.link("isp3", "up0", "inet", "isp3")
            t.addr("gw", "lan0", "198.18.10.1/24")
            t.addr("gw", "fiber0", "198.18.1.2/30")
            t.addr("gw", "mob1", "198.18.2.2/30")
            t.addr("isp1", "down0", "198.18.1.1/30")
            t.addr("isp1", "up0", "198.18.101.1/30")
            t.addr("isp2", "down0", "198.18.2.1/30")
            t.addr("isp2", "up0", "198.18.102.1/30")
            t.addr("inet", "isp1", "198.18.101.2/30")
            t.addr("inet", "isp2", "198.18.102.2/30")
            t.addr("gw", "sat0", "198.18.4.2/30")
            t.addr("isp3", "down0", "198.18.4.1/30")
            t.addr("isp3", "up0", "198.18.103.1/30")
            t.addr("inet", "isp3", "198.18.103.2/30")
            t.route("inet", "198.18.4.0/30", "via", "198.18.103.1")
            t.route("isp3", "198.19.0.0/16", "via", "198.18.103.2")
            t.sh("gw", "ip", "link", "set", "dev", "sat0", "down")  # the terminal is off until needed
            for a in ("198.19.0.1", "198.19.0.2", "198.19.0.3", SERVER):
                t.addr("inet", "lo", f"{a}/32")
            t.route("inet", "198.18.1.0/30", "via", "198.18.101.1")
            t.route("inet", "198.18.2.0/30", "via", "198.18.102.1")
            t.route("isp1", "198.19.0.0/16", "via", "198.18.101.2")
            t.route("isp2", "198.19.0.0/16", "via", "198.18.102.2")
            t.addr("lan", "eth0", "198.18.10.10/24")
            t.addr("lan", "eth0", "198.18.10.20/24")
            t.route("lan", "default", "via", "198.18.10.1")
            # NAT on each uplink is the gateway's own configuration, not failoverd's.
            t.nft(
                "gw",
                "table ip labnat {\n chain post {\n type nat hook postrouting priority srcnat;\n"
                ' oifname "fiber0" masquerade\n oifname "mob1" masquerade\n oifname "sat0" masquerade\n }\n}\n',
            )
            # Counters of the probes each ISP forwards (router-originated traffic must keep its uplink).
            for isp, src in (("isp1", FIBER_NAT), ("isp2", MOBILE_NAT)):
                t.nft(
                    isp,
                    f"table inet lab {{\n chain transit {{\n type filter hook forward priority 0;\n"
                    f" ip saddr {src} udp dport 7 counter\n }}\n}}\n",
                )
            for a in TIME_SERVERS:
                t.addr("inet", "lo", f"{a}/32")
                self.time_server(a, "chrony" if a != TIME_SERVERS[-1] else "+1000")
            targets = [x for a in ("198.19.0.1", "198.19.0.2", "198.19.0.3") for x in ("--bind", a)]
            t.spawn("inet", [PY, "-m", "lab.responder", *targets], cwd=ROOT)
        except BaseException:
            t.destroy()
            raise
        return self

    def time_server(self, address: str, kind: str) -> None:
        """Serve time on `address`: a real chronyd ("chrony", true time) or the lab's liar (an offset such
        as "+1000", "year-2000", "silent"). Replaces whatever served there before."""
        old = self.time_servers.pop(address, None)
        if old is not None:
            self.topo.stop(old)
        if kind == "chrony":
            conf = self.tmp / f"chrony-{address}.conf"
            # -x: never touch the machine's clock; serve it as stratum 3.
            conf.write_text(
                f"bindaddress {address}\nport 123\ncmdport 0\nlocal stratum 3\nallow all\n"
                f"pidfile {self.tmp}/chrony-{address}.pid\n"
            )
            cmd = ["chronyd", "-x", "-d", "-u", "root", "-f", str(conf)]
        else:
            mode = ["--offset", kind] if kind[0] in "+-" else [f"--{kind}"]
            cmd = [PY, "-m", "lab.liar", "--bind", address, *mode]
        self.time_servers[address] = self.topo.spawn("inet", cmd, log=self.tmp / f"time-{address}.log", cwd=ROOT)

    def clock(self) -> dict[str, Any]:
        return self.ctl("clock")

    def destroy(self) -> None:
        self.topo.destroy()

    # -- faults -------------------------------------------------------------------------------------
    def carrier(self, up: bool) -> None:
        """Cut or mend the fiber: the ISP's end goes down, so the gateway sees carrier loss."""
        self.topo.sh("isp1", "ip", "link", "set", "dev", "down0", "up" if up else "down")

    def blackhole(self, on: bool, isp: str = "isp1") -> None:
        """The ISP router keeps its link and its address but forwards nothing."""
        if on:
            self.topo.nft(
                isp,
                "table inet fault {\n chain transit {\n type filter hook forward priority -10; policy drop;\n }\n}\n",
            )
        else:
            self.topo.nft(isp, "delete table inet fault\n")

    def kill_target(self, address: str) -> None:
        self.topo.sh("inet", "ip", "addr", "del", f"{address}/32", "dev", "lo")

    def probe_packets(self, isp: str) -> int:
        out = self.topo.sh(isp, "nft", "-j", "list", "table", "inet", "lab").stdout
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if rule:
                for expr in rule["expr"]:
                    if "counter" in expr:
                        return int(expr["counter"]["packets"])
        raise LabError("no probe counter")

    # -- failoverd ----------------------------------------------------------------------------------
    def start(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        cmd = [
            PY,
            "-m",
            "failoverd.cli",
            "run",
            "--policy",
            str(self.policy_path),
            "--state-dir",
            str(self.state_dir),
            "--socket",
            self.socket,
            "--netns",
            self.topo.ns("gw"),
            "--log-json",
            *extra,
        ]
        out = self.log.open("ab")
        self.daemon = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self.topo.procs.append(self.daemon)
        wait_answering(self.daemon, self.socket, self.log, "failoverd")
        return self.daemon

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.daemon is not None
        return self.topo.stop(self.daemon, sig)

    def ctl(self, *args: str) -> dict[str, Any]:
        return failoverctl(self.socket, *args)

    def cls(self, name: str) -> str | None:
        for c in self.ctl("status")["classes"]:
            if c["name"] == name:
                return c["uplink"] if c["route"] == "via" else c["route"]
        raise LabError(f"no class {name}")

    def uplink_state(self, name: str) -> str:
        return next(u["state"] for u in self.ctl("status")["uplinks"] if u["name"] == name)

    def wait_class(self, name: str, where: str | None, timeout: float = 10) -> None:
        wait_for(lambda: self.cls(name) == where, timeout, 0.05, f"class {name} on {where}")

    # -- kernel views -------------------------------------------------------------------------------
    def routes(self) -> list[str]:
        out = self.topo.sh("gw", "ip", "-4", "route", "show", "table", "all", "proto", "74").stdout
        return sorted(line.strip() for line in out.splitlines() if line.strip())

    def rules(self) -> list[str]:
        out = self.topo.sh("gw", "ip", "-4", "rule", "show").stdout
        return sorted(line.strip() for line in out.splitlines() if "proto 74" in line)

    # -- traffic ------------------------------------------------------------------------------------
    def start_traffic(self, rate: int = 500) -> None:
        self.result = self.tmp / "traffic.json"
        self.receiver = self.topo.spawn(
            "inet", [PY, "-m", "lab.traffic", "recv", "--bind", f"{SERVER}:9000", "--out", str(self.result)], cwd=ROOT
        )
        time.sleep(0.3)
        self.sender = self.topo.spawn(
            "lan", [PY, "-m", "lab.traffic", "send", "--dst", f"{SERVER}:9000", "--rate", str(rate)], cwd=ROOT
        )

    def stop_traffic(self) -> dict[str, Any]:
        assert self.sender is not None and self.receiver is not None
        self.topo.stop(self.sender)
        time.sleep(0.3)
        self.topo.stop(self.receiver)
        summary: dict[str, Any] = json.loads(self.result.read_text())
        return summary


PEER_POLICY = """
site: SITE
uplinks:
  - name: fiber
    interface: fiber0
    next_hop: NET.1
    probes: [{kind: udp-echo, target: 198.19.0.1, interval: 100ms, timeout: 300ms}]
  - name: mobile
    interface: mob1
    next_hop: NET.5
    kind: cellular
    probes: [{kind: udp-echo, target: 198.19.0.1, interval: 100ms, timeout: 300ms}]
classes:
  - name: critical
    path: [fiber, mobile]
control:
  max_override: 1h
"""


@dataclass
class PeerGateway:
    """A second gateway beside a GatewayLab's, with its own site and failoverd: node `NODE` with two
    uplinks (fiber, mobile) straight to the lab's internet side, so both reach its probe targets and
    its services (a broker, say). Made by `peer()`; removed with the lab's topology."""

    lab: GatewayLab
    site: str
    node: str
    net: str  # a /24's first three octets, e.g. "198.18.21": NET.0/30 fiber, NET.4/30 mobile
    daemon: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.tmp = self.lab.tmp / self.node
        self.tmp.mkdir(exist_ok=True)
        self.policy_path = self.tmp / "policy.yaml"
        self.policy_path.write_text(PEER_POLICY.replace("SITE", self.site).replace("NET", self.net))
        self.state_dir = self.tmp / "state"
        self.socket = str(self.tmp / "ctl.sock")
        self.log = self.tmp / "failoverd.log"

    def build(self) -> PeerGateway:
        t = self.lab.topo
        t.add_node(self.node)
        for base, ifname, inet_if in ((0, "fiber0", f"{self.node}f"), (4, "mob1", f"{self.node}m")):
            t.link(self.node, ifname, "inet", inet_if)
            t.addr(self.node, ifname, f"{self.net}.{base + 2}/30")
            t.addr("inet", inet_if, f"{self.net}.{base + 1}/30")
        return self

    def start(self) -> subprocess.Popen[bytes]:
        cmd = [PY, "-m", "failoverd.cli", "run", "--policy", str(self.policy_path), "--state-dir", str(self.state_dir)]
        cmd += ["--socket", self.socket, "--netns", self.lab.topo.ns(self.node), "--log-json"]
        self.daemon = subprocess.Popen(
            cmd, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        self.lab.topo.procs.append(self.daemon)
        wait_answering(self.daemon, self.socket, self.log, f"failoverd ({self.site})")
        return self.daemon

    def ctl(self, *args: str) -> dict[str, Any]:
        return failoverctl(self.socket, *args)


def peer(lab: GatewayLab, site: str, index: int = 1) -> PeerGateway:
    """Another gateway, `site`, in `lab`'s topology (index 1..9 keeps nodes and addresses apart)."""
    return PeerGateway(lab, site, f"gw{index + 1}", f"198.18.{20 + index}").build()
