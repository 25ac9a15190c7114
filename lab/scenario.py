"""Failure scenarios: a timeline of faults against the lab while traffic flows, and what must come of it.

A scenario file (lab/scenarios/NAME.yaml) names a policy, the traffic, numbered steps (`at` seconds
after the traffic starts: a fault, an operator command, a daemon crash) and expectations measured on
what the traffic felt and what failoverd decided. `run()` brings failoverd up on the gateway, plays
the steps, and returns a report: passed, each expectation with its measured value, the outage and
losses of the critical stream (of each family, when an IPv6 one runs), the switches, and a timeline.

Streams are measured per class: the IPv6 stream `critical6` is what the class critical/v6 carries (a
dual-stack class is two to the engine, CLASS and CLASS/v6, as a dual-stack uplink is NAME and NAME/v6),
so an expectation names `class: critical/v6` and its uplinks `fiber/v6`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from failoverd.ctl import Client
from failoverd.errors import PolicyError
from failoverd.policy import load_policy
from failoverd.policy.load import parse_document
from failoverd.policy.model import Policy
from lab.netns import LabError, wait_for
from lab.topology import ROOT, Lab

SCENARIOS = ROOT / "lab" / "scenarios"
FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
PY = sys.executable
FAULT_TABLES = ("fault_blackhole", "fault_loss", "fault_dns", "fault_outage")  # what nft_fault installs


@dataclass(frozen=True)
class StreamPath:
    """Where a stream goes: from a LAN node to a server in the internet node, and the class it measures."""

    node: str
    server: str  # address:port, an IPv6 address in brackets
    tcp: bool
    cls: str

    @property
    def family(self) -> str:
        return "ipv6" if self.server.startswith("[") else "ipv4"


STREAMS = {
    "critical": StreamPath("dispatch", "198.19.1.10:9000", False, "critical"),
    "bulk": StreamPath("office", "198.19.1.20:9001", True, "bulk"),
    "critical6": StreamPath("dispatch", "[2001:db8:19:1::10]:9000", False, "critical/v6"),
}
# The ISP nodes, whose forwarding faults are cleared before and after every scenario.
ISPS = ("isp-fiber", "mno-a", "mno-b", "mno-c", "sat-gs")
# The lab's mobile carriers: the node that is each one's network, and its MCCMNC in the modem simulator.
CARRIERS = {"carrier-a": ("mno-a", "20408"), "carrier-b": ("mno-b", "20416")}
# The modem node (lab/mmsim.py on a private bus) and the addresses its radio side masquerades to.
MODEM_BUS = "unix:path=/tmp/fo-lab-modem/bus"
MODEM_CONFIG = ROOT / "lab" / "modem.json"
MODEM_NAT = {
    "198.18.6.2": "carrier-a",
    "198.18.7.2": "carrier-b",
    "2001:db8:6::2": "carrier-a",
    "2001:db8:7::2": "carrier-b",
}
# Carrier C (mno-c) is IPv6-only: what its subscribers send to IPv4 through its NAT64 leaves masqueraded
# as this address (containerlab/failoverd.clab.yml).
NAT64_NODE, NAT64_SOURCE = "mno-c", "198.18.108.1"
MMSIM = ("org.freedesktop.ModemManager1", "/net/failoverd/MmSim", "net.failoverd.MmSim.Control")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Stream(Strict):
    rate: float = Field(default=1000, gt=0, le=20000)


class Traffic(Strict):
    critical: Stream | None = Stream()
    bulk: Stream | None = Stream(rate=200)
    # The dispatch node's IPv6 stream (class critical/v6), off unless a scenario asks for it.
    critical6: Stream | None = None


class Step(Strict):
    at: float = Field(ge=0)
    do: Literal[
        "carrier",
        "blackhole",
        "loss",
        "dns-fail",
        "flap",
        "carrier-outage",
        "sat-delay",
        "kill-daemon",
        "start-daemon",
        "failoverctl",
        "stop-node-process",
        "ntp-server",
        "clock-step",
        "sim-reject",
        "data-stop",
    ]
    server: str | None = None  # ntp-server: the address; kind says what serves there
    kind: str | None = None  # chrony, an offset such as "+1000", year-2000, silent
    shift: str | None = None  # clock-step: the daemon's wall clock moves by this, e.g. "+3600"
    slot: int | None = Field(default=None, ge=1)  # sim-reject: every network refuses the SIM in this slot
    cause: str | None = None  # sim-reject: the reject cause (ModemManager's MobileEquipment error nick)
    uplink: str | None = None
    carrier: str | None = None
    up: bool | None = None
    on: bool = True
    percent: float | None = Field(default=None, ge=0, le=100)
    # blackhole, loss: only packets of this family (none: both), as when an ISP's IPv6 alone breaks.
    family: Literal["ipv4", "ipv6"] | None = None
    direction: Literal["both", "down", "up"] = "both"
    period: float | None = Field(default=None, gt=0)
    until: float | None = None
    ms: float | None = Field(default=None, ge=0)
    args: list[str] | None = None
    node: str | None = None
    match: str | None = None
    note: str | None = None


class Expect(Strict):
    # Which run is measured: the scenario's policy, or its `baseline` policy (the same steps again).
    of: Literal["policy", "baseline"] = "policy"
    what: Literal[
        "outage_ms",
        "lost_packets",
        "switches",
        "final_uplink",
        "carried_by",
        "ends_on",
        "never_on",
        "uplink_state",
        "delivered",
        "clock_state",
        "falseticker",
        "clock_steps",
        "drill_verdict",
        "warning_lead_s",
        "modem_profile",
    ]
    any_of: list[str] | None = None
    server: str | None = None
    cls: str | None = Field(default=None, alias="class")
    uplink: str | None = None
    max: float | None = None
    min: float | None = None
    equals: str | None = None
    uplinks: list[str] | None = None


class ScenarioFile(BaseModel):
    """a scenario: name, policy, duration, steps, expect"""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    name: str
    title: str
    about: str = ""
    policy: str = "policies/lab.yaml"
    # Play the same steps again under this policy first, for comparison (the report's `baseline`).
    baseline: str | None = None
    duration: float = Field(gt=0, le=600)
    # Seconds the traffic waits once failoverd has settled (every class placed, every hot uplink judged).
    settle: float = Field(default=0.5, ge=0)
    # Run failoverd under libfaketime so that clock-step can move its wall clock (and only its own).
    faketime: bool = False
    # Uplinks that must be UP before the traffic starts (a modem registers and connects first); the
    # baseline run waits for those of them its policy has.
    wait_up: list[str] = Field(default_factory=list)
    traffic: Traffic = Traffic()
    steps: list[Step] = Field(default_factory=list)
    expect: list[Annotated[Expect, Field()]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _baseline_for_its_expectations(self) -> ScenarioFile:
        for i, e in enumerate(self.expect):
            if e.of == "baseline" and self.baseline is None:
                raise ValueError(f"expect.{i} ({e.what}) is of: baseline, but there is no baseline: POLICY to run")
        return self


def unknown_classes(scenario: ScenarioFile, policy: Policy) -> list[str]:
    """Classes the scenario's expectations name that its compiled policy does not have (a typo, or an
    IPv6 twin such as critical/v6 from a failoverd that does not split classes by family)."""
    named = {e.cls for e in scenario.expect if e.cls is not None}
    return sorted(named - set(policy.classes))


def catalog() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SCENARIOS.glob("*.yaml"))}


def load_scenario(name_or_path: str) -> ScenarioFile:
    path = Path(name_or_path)
    if not path.exists():
        path = catalog().get(name_or_path, path)
    if not path.exists():
        raise LabError(f"no scenario {name_or_path!r} (scenarios: {', '.join(catalog())})")
    scenario, _ = parse_document(path.read_text(), str(path), ScenarioFile)
    return scenario


def launch_failoverd(netns: str, policy: Path, out: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `failoverd run` for the gateway namespace (state, socket and log under `out`) and wait until
    it answers on its control socket."""
    socket = str(out / "failoverd.sock")
    cmd = [PY, "-m", "failoverd.cli", "run", "--policy", str(policy), "--state-dir", str(out / "state")]
    cmd += ["--socket", socket, "--netns", netns, "--log-json"]
    log = (out / "failoverd.log").open("ab")
    # ModemManager, for a policy with a modem, is the lab's simulator on its private bus.
    env = {"DBUS_SYSTEM_BUS_ADDRESS": MODEM_BUS, **(env or os.environ)}
    daemon = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True, env=env)
    client = Client(socket, timeout=2)

    def ready() -> bool:
        if daemon.poll() is not None:
            raise LabError(f"failoverd exited with {daemon.returncode}; see {out / 'failoverd.log'}")
        try:
            return bool(client.request({"cmd": "status"}).get("ok"))
        except OSError:
            return False

    wait_for(ready, 20, what="failoverd to answer on its socket")
    return daemon


@dataclass
class Observer:
    """Polls failoverd's status every 100 ms: the uplink and class timeline for the report and plot."""

    socket: str
    samples: list[tuple[float, dict[str, str], dict[str, str]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        client = Client(self.socket, timeout=2)
        while not self.stop.is_set():
            try:
                st = client.request({"cmd": "status"})
            except (OSError, ValueError):
                st = None  # daemon down (a crash scenario) or busy
            if st and st.get("ok"):
                ups = {u["name"]: u["state"] + ("*" if u["suppressed"] else "") for u in st["uplinks"]}
                cls = {c["name"]: (c["uplink"] if c["route"] == "via" else c["route"]) for c in st["classes"]}
                self.samples.append((time.monotonic(), ups, cls))
            self.stop.wait(0.1)


@dataclass
class Run:
    lab: Lab
    scenario: ScenarioFile
    policy: Policy
    out: Path
    progress: Callable[[str], None] = print
    daemon: subprocess.Popen[bytes] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    t0: float = 0.0
    clock: dict[str, Any] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)
    drills: list[dict[str, Any]] = field(default_factory=list)  # drill records with a verdict
    alarms: list[dict[str, Any]] = field(default_factory=list)
    policy_file: str | None = None  # what the daemon runs: the scenario's policy unless this is the baseline run
    baseline: dict[str, Any] | None = None  # the baseline run's report
    base: Run | None = None  # the baseline run itself: what expectations `of: baseline` measure
    profiles: dict[str, str] = field(default_factory=dict)  # uplink → its modem's profile at the end
    # What the run's expectations measure, kept by report(): each class's stream, the decisions made
    # during the traffic, and where the classes and uplinks ended.
    per_class: dict[str, Any] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    finals: dict[str, Any] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)

    @property
    def policy_path(self) -> Path:
        return ROOT / (self.policy_file or self.scenario.policy)

    @property
    def stamp(self) -> Path:
        return self.out / "faketime"

    @property
    def socket(self) -> str:
        return str(self.out / "failoverd.sock")

    def say(self, text: str) -> None:
        t = time.monotonic() - self.t0 if self.t0 else 0.0
        self.progress(f"  {t:7.2f}s  {text}")

    # -- failoverd ----------------------------------------------------------------------------------
    def start_daemon(self) -> None:
        env = dict(os.environ)
        if self.scenario.faketime:
            env.update(
                LD_PRELOAD=FAKETIME,
                FAKETIME_TIMESTAMP_FILE=str(self.stamp),
                FAKETIME_NO_CACHE="1",
                FAKETIME_DONT_FAKE_MONOTONIC="1",
            )
        self.daemon = launch_failoverd(self.lab.topo.ns("gw"), self.policy_path, self.out, env)

    def kill_daemon(self, sig: int = signal.SIGKILL) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            os.kill(self.daemon.pid, sig)
            self.daemon.wait(10)

    # -- faults -------------------------------------------------------------------------------------
    def isp_of(self, uplink: str) -> tuple[str, str]:
        # An uplink's IPv6 twin (fiber/v6) is the same link as the uplink the file names (fiber).
        u = self.policy.uplinks.get(uplink) or self.policy.uplinks.get(uplink.split("/", 1)[0])
        if u is None:
            raise LabError(f"unknown uplink {uplink!r}")
        return self.lab.peer("gw", u.interface)

    def nft_fault(self, node: str, name: str, rules: list[str] | None) -> None:
        """Install (or with None remove) a named fault table in a node's forward path."""
        if rules is None:
            self.lab.topo.sh(node, "nft", "delete", "table", "inet", name, check=False)
            return
        body = "\n".join(f"  {r}" for r in rules)
        self.lab.topo.nft(
            node,
            f"table inet {name} {{\n chain transit {{\n  type filter hook forward priority -10;\n{body}\n }}\n}}\n",
        )

    def apply(self, step: Step) -> None:
        topo = self.lab.topo
        match step.do:
            case "carrier":
                node, iface = self.isp_of(step.uplink or "")
                topo.sh(node, "ip", "link", "set", "dev", iface, "up" if step.up else "down")
            case "blackhole":
                node, _ = self.isp_of(step.uplink or "")
                self.nft_fault(node, "fault_blackhole", [f"{_family_match(step)}drop"] if step.on else None)
            case "loss":
                node, down_if = self.isp_of(step.uplink or "")
                pct = int(step.percent or 0)
                sel = {"both": "", "down": f'oifname "{down_if}" ', "up": f'iifname "{down_if}" '}[step.direction]
                sel = _family_match(step) + sel
                self.nft_fault(node, "fault_loss", [f"{sel}numgen random mod 100 < {pct} drop"] if pct else None)
            case "dns-fail":
                node, _ = self.isp_of(step.uplink or "")
                self.nft_fault(node, "fault_dns", ["udp dport 53 drop", "tcp dport 53 drop"] if step.on else None)
            case "flap":
                node, iface = self.isp_of(step.uplink or "")
                thread = threading.Thread(
                    target=self._flap, args=(node, iface, step.period or 2.0, step.until or 0.0), daemon=True
                )
                thread.start()
                self.threads.append(thread)
            case "carrier-outage":
                # The carrier's whole network: every uplink of that operator, and its radio network as the
                # modem sees it (registration drops, the modem's data path through it too).
                nodes = {self.isp_of(n)[0] for n, u in self.policy.uplinks.items() if u.operator == step.carrier}
                lab_carrier = CARRIERS.get(step.carrier or "")
                if lab_carrier is not None:
                    nodes.add(lab_carrier[0])
                    self.mmsim("CarrierOutage", f"string:{lab_carrier[1]}", f"boolean:{str(step.on).lower()}")
                if not nodes:
                    raise LabError(f"no uplink of carrier {step.carrier!r}")
                for node in sorted(nodes):
                    self.nft_fault(node, "fault_outage", ["drop"] if step.on else None)
            case "sim-reject":
                self.mmsim(
                    "RejectSim", f"string:{self.imsi(step.slot or 1)}", f"string:{step.cause if step.on else ''}"
                )
            case "data-stop":
                code = CARRIERS[step.carrier or ""][1] if step.carrier in CARRIERS else ""
                if not code:
                    raise LabError(f"data-stop: carrier {step.carrier!r} is not one of {', '.join(CARRIERS)}")
                self.mmsim("DataStop", f"string:{code}", f"boolean:{str(step.on).lower()}")
            case "sat-delay":
                topo.sh(
                    "sat-gs",
                    "python3",
                    "-c",
                    "import socket,sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                    f".sendto(b'{step.ms or 0}', ('127.0.0.1', 9999))",
                )
            case "kill-daemon":
                self.kill_daemon(signal.SIGKILL)
            case "start-daemon":
                self.start_daemon()
            case "failoverctl":
                r = subprocess.run(
                    [PY, "-m", "failoverd.ctl", "--socket", self.socket, *(step.args or [])],
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                    timeout=20,
                    check=False,
                )
                self.say(f"failoverctl {' '.join(step.args or [])}: {(r.stdout + r.stderr).strip()}")
            case "stop-node-process":
                topo.sh(step.node or "", "pkill", "-f", step.match or "", check=False)
            case "ntp-server":
                self.ntp_server(step.server or "", step.kind or "chrony")
            case "clock-step":
                self.stamp.write_text(f"{step.shift}\n")

    def mmsim(self, method: str, *args: str) -> None:
        """Call the modem simulator's control interface (the lab's modem node) with dbus-send."""
        dest, path, interface = MMSIM
        r = subprocess.run(
            [
                "dbus-send",
                f"--bus={MODEM_BUS}",
                "--print-reply",
                f"--dest={dest}",
                path,
                f"{interface}.{method}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if r.returncode != 0:
            raise LabError(f"modem simulator {method}: {r.stderr.strip() or r.stdout.strip()}")

    @staticmethod
    def imsi(slot: int) -> str:
        slots = json.loads(MODEM_CONFIG.read_text())["slots"]
        if not 1 <= slot <= len(slots) or slots[slot - 1] is None:
            raise LabError(f"the lab's modem has no SIM in slot {slot}")
        return str(slots[slot - 1]["imsi"])

    def ntp_server(self, address: str, kind: str) -> None:
        """Replace what serves time on `address` in the internet node: chronyd (true time) or the liar."""
        n = address.rsplit(".", 1)[1]
        topo = self.lab.topo
        topo.sh("inet", "pkill", "-f", f"fo-lab-chrony-{n}.conf", check=False)
        topo.sh("inet", "pkill", "-f", f"lab.liar --bind {address}", check=False)
        time.sleep(0.2)
        if kind == "chrony":
            topo.sh("inet", "chronyd", "-x", "-u", "root", "-f", f"/tmp/fo-lab-chrony-{n}.conf")
        else:
            mode = ["--offset", kind] if kind[0] in "+-" else [f"--{kind}"]
            topo.spawn("inet", [PY, "-m", "lab.liar", "--bind", address, *mode], cwd=ROOT)

    def _flap(self, node: str, iface: str, period: float, until: float) -> None:
        up = True
        while time.monotonic() - self.t0 < until:
            up = not up
            self.lab.topo.sh(node, "ip", "link", "set", "dev", iface, "up" if up else "down")
            self.events.append({"t": time.monotonic(), "fault": f"flap {iface} {'up' if up else 'down'}"})
            time.sleep(period / 2)
        self.lab.topo.sh(node, "ip", "link", "set", "dev", iface, "up")

    def clear_faults(self) -> None:
        # One nft transaction a node (declaring a table before deleting it makes the delete safe when it
        # is absent): `ip netns exec` costs tens of milliseconds, and this runs before and after each scenario.
        script = "".join(f"table inet {t}\ndelete table inet {t}\n" for t in FAULT_TABLES)
        for node in (n for n in ISPS if n in self.lab.spec.nodes):
            self.lab.topo.nft(node, script)
            subprocess.run(["ip", "-n", self.lab.topo.ns(node), "link", "set", "dev", "down0", "up"], check=False)
        if "modem" in self.lab.spec.nodes:
            self.mmsim("Reset")  # faults cleared, the modem back on slot 1 and registering again

    def honest_time(self) -> None:
        """chronyd on every time server again, restarting only those a scenario replaced (each restart
        costs a quarter of a second, and most scenarios leave them alone)."""
        running = self.lab.topo.sh("inet", "pgrep", "-af", "fo-lab-chrony-|lab.liar", check=False).stdout
        for n in (123, 124, 125, 126):
            if f"fo-lab-chrony-{n}.conf" not in running or f"lab.liar --bind 198.19.0.{n}" in running:
                self.ntp_server(f"198.19.0.{n}", "chrony")

    def settled(self) -> bool:
        """failoverd has placed every class and judged every hot uplink (a cold standby stays STANDBY)."""
        try:
            st = Client(self.socket, timeout=2).request({"cmd": "status"})
        except (OSError, ValueError):
            return False
        return (
            bool(st.get("ok"))
            and all(c["route"] != "pending" for c in st["classes"])
            and all(u["state"] != "UNKNOWN" for u in st["uplinks"])
            and all(u["state"] == "UP" for u in st["uplinks"] if u["name"] in self.scenario.wait_up)
        )

    # -- the run ------------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        """The scenario's report; with a `baseline`, the same steps are first played under that policy."""
        sc = self.scenario
        if sc.baseline is not None and self.policy_file is None:
            try:
                policy = load_policy(ROOT / sc.baseline)
            except PolicyError as exc:
                raise LabError(str(exc)) from None
            base = Run(self.lab, sc, policy, self.out / "baseline", self.progress, policy_file=sc.baseline)
            self.base = base
            self.say(f"baseline run under {sc.baseline}")
            try:
                self.baseline = base.execute()
            finally:
                base.kill_daemon(signal.SIGKILL)
            self.say(f"the run under {sc.policy}")
        return self.execute_once()

    def execute_once(self) -> dict[str, Any]:
        sc = self.scenario
        self.out.mkdir(parents=True, exist_ok=True)
        self.stamp.write_text("+0\n")
        # Every scenario starts from a clean gateway: no routes or overrides left by the one before. The
        # purge (a process of its own, as it enters the gateway's namespace) runs while the faults clear.
        shutil.rmtree(self.out / "state", ignore_errors=True)
        purge = subprocess.Popen(
            [PY, "-m", "failoverd.cli", "purge", "--policy", str(self.policy_path), "--netns", self.lab.topo.ns("gw")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.clear_faults()
        self.honest_time()  # whatever the last scenario left
        said, _ = purge.communicate(timeout=30)
        if purge.returncode != 0:
            raise LabError(f"failoverd purge exited with {purge.returncode}: {said.decode(errors='replace').strip()}")
        # As after `lab up`: a link the last scenario cut and mended (or clear_faults raised) puts its
        # link-local addresses through duplicate detection again, and IPv6 probes sent meanwhile are lost.
        self.lab.topo.wait_ipv6_settled()
        self.wall0 = time.time()  # the incident report's period begins as the daemon starts
        self.start_daemon()
        streams: dict[str, tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], Path]] = {}
        for name, path in STREAMS.items():
            spec = getattr(sc.traffic, name)
            if spec is None:
                continue
            result = self.out / f"traffic-{name}.json"
            flag = ["--tcp"] if path.tcp else []
            recv = self.lab.topo.spawn(
                "inet", [PY, "-m", "lab.traffic", "recv", "--bind", path.server, "--out", str(result), *flag], cwd=ROOT
            )
            streams[name] = (recv, recv, result)
        # The receivers start while failoverd settles; `settle` (at least 0.3 s) gives them time to bind.
        try:
            wait_for(self.settled, 20, what="failoverd to place every class")
        except LabError:
            for recv, _, _ in streams.values():  # not left bound to the next run's addresses
                self.lab.topo.stop(recv)
            raise
        time.sleep(max(sc.settle, 0.3))
        for name, path in STREAMS.items():
            if name not in streams:
                continue
            spec = getattr(sc.traffic, name)
            flag = ["--tcp"] if path.tcp else []
            send = self.lab.topo.spawn(
                path.node,
                [PY, "-m", "lab.traffic", "send", "--dst", path.server, "--rate", str(spec.rate), *flag],
                log=self.out / f"send-{name}.log",  # a UDP sender's last line: {"sent": N}
                cwd=ROOT,
            )
            streams[name] = (streams[name][0], send, streams[name][2])
        observer = Observer(self.socket)
        watcher = threading.Thread(target=observer.run, daemon=True)
        self.t0 = time.monotonic()
        watcher.start()
        self.say(f"traffic flowing ({', '.join(streams)}); scenario {sc.name}: {sc.title}")
        try:
            for step in sorted(sc.steps, key=lambda s: s.at):
                delay = self.t0 + step.at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                what = step.note or f"{step.do} " + " ".join(
                    f"{k}={v}"
                    for k, v in step.model_dump(exclude_none=True, exclude={"at", "do", "note"}).items()
                    if not (k in ("on", "direction") and v in (True, "both"))
                )
                self.events.append({"t": time.monotonic(), "fault": what})
                self.say(f"inject: {what}")
                self.apply(step)
            rest = self.t0 + sc.duration - time.monotonic()
            if rest > 0:
                time.sleep(rest)
        finally:
            stopped = time.monotonic()
            for _, send, _ in streams.values():
                self.lab.topo.stop(send)
            time.sleep(0.5)
            for recv, _, _ in streams.values():
                self.lab.topo.stop(recv)
            observer.stop.set()
            watcher.join(2)
            for thread in self.threads:
                thread.join(sc.duration)
        # Keyed by the class each stream measures (critical6 → critical/v6).
        traffic = {}
        for name, (_, _, result) in streams.items():
            if result.exists():
                summary = json.loads(result.read_text())
                if not STREAMS[name].tcp:
                    summary = with_silent_tail(summary, stopped, _sent(self.out / f"send-{name}.log"))
                traffic[STREAMS[name].cls] = summary
        try:
            final = Client(self.socket).request({"cmd": "status"})
            history = Client(self.socket).request({"cmd": "history", "last": 2000})["records"]
            self.clock = Client(self.socket).request({"cmd": "clock"})
            # The incident report, as an operator would ask for it after the event (failoverctl report).
            incident = Client(self.socket).request({"cmd": "report", "since": f"{self.wall0:.6f}", "until": "now"})
            if incident.get("ok"):
                self.write_incident(incident)
        except OSError:
            final, history = {}, []
        self.kill_daemon(signal.SIGTERM)
        self.clear_faults()
        return self.report(traffic, final, history, observer)

    # -- the report ---------------------------------------------------------------------------------
    def nat_names(self) -> dict[str, str]:
        """Source address at the receiver → the uplink that carried the packet (its engine name: an IPv6
        source on a dual-stack uplink names the uplink's IPv6 twin, fiber/v6)."""
        names = {}
        for name, u in self.policy.uplinks.items():
            out = self.lab.topo.sh("gw", "ip", "-o", "addr", "show", "dev", u.interface, check=False).stdout
            for word in out.split():
                if "/" not in word:
                    continue
                try:
                    addr = ip_address(word.split("/")[0])
                except ValueError:
                    continue
                if not addr.is_link_local:
                    names[str(addr)] = self.twin_name(name, addr.version)
            if u.modem is not None:  # the modem masquerades again, as the network it is registered on
                names.update({a: f"{self.twin_name(name, ip_address(a).version)}/{c}" for a, c in MODEM_NAT.items()})
            if self.lab.peer("gw", u.interface)[0] == NAT64_NODE:  # IPv4 destinations reached by NAT64
                names[NAT64_SOURCE] = name.split("/")[0]
        return names

    def twin_name(self, name: str, version: int) -> str:
        """The engine's name for the uplink `name` in one family: fiber/v6 for IPv6 over a dual-stack fiber
        when the policy has that twin; the name itself otherwise (an uplink of one family)."""
        base = name.split("/", 1)[0]
        if version == 6 and f"{base}/v6" in self.policy.uplinks:
            return f"{base}/v6"
        return base

    def write_incident(self, reply: dict[str, Any]) -> None:
        """incident.md (and incident.json, the records it was made from, for its plot) in the run's directory."""
        from failoverd import report  # noqa: PLC0415

        inc = report.build(
            reply["records"], reply["since"], reply["until"], site=reply.get("site"), metered=reply.get("metered", ())
        )
        (self.out / "incident.md").write_text(report.markdown(inc))
        (self.out / "incident.json").write_text(json.dumps(reply))

    def report(
        self, traffic: dict[str, Any], final: dict[str, Any], history: list[dict[str, Any]], observer: Observer
    ) -> dict[str, Any]:
        nat = self.nat_names()
        decisions = [r for r in history if r.get("kind") == "decision" and r.get("mono", 0) >= self.t0]
        per_class: dict[str, Any] = {}
        for cls, t in traffic.items():
            carried = {nat.get(src, src): n for src, n in t.get("by_source", {}).items()}
            per_class[cls] = {
                "outage_ms": t.get("max_gap_ms"),
                "lost_packets": t.get("lost"),
                "received": t.get("received"),
                "carried_by": carried,
                "path_changes": [
                    {"t": round(s["t"] - self.t0, 3), "to": nat.get(s["to"], s["to"])} for s in t.get("switches", [])
                ],
            }
        finals = {c["name"]: (c["uplink"] if c["route"] == "via" else c["route"]) for c in final.get("classes", [])}
        states = {u["name"]: u["state"] for u in final.get("uplinks", [])}
        self.profiles = {m["uplink"]: m["profile"] for m in final.get("modems", [])}
        self.drills = [
            r for r in history if r.get("kind") == "drill" and "verdict" in r and r.get("mono", 0) >= self.t0
        ]
        self.alarms = [r for r in history if r.get("kind") == "alarm" and r.get("mono", 0) >= self.t0]
        self.per_class, self.decisions, self.finals, self.states = per_class, decisions, finals, states
        # The baseline run is measured by the main run's report (expectations `of: baseline`), not its own.
        expect = [] if self.policy_file is not None else self.scenario.expect
        results = [self.measure(e) for e in expect]
        timeline = sorted(
            [{"t": round(e["t"] - self.t0, 3), "kind": "fault", "what": e["fault"]} for e in self.events]
            + [
                {"t": round(r["mono"] - self.t0, 3), "kind": r["kind"], "what": _describe(r)}
                for r in history
                if r.get("mono", 0) >= self.t0 - 0.5 and _describe(r)
            ],
            key=lambda x: x["t"],
        )
        critical = per_class.get("critical", {})
        # The critical stream of each family that ran: outage and losses side by side.
        families = {
            path.family: {
                "class": path.cls,
                "outage_ms": per_class[path.cls].get("outage_ms"),
                "lost_packets": per_class[path.cls].get("lost_packets"),
            }
            for path in (STREAMS["critical"], STREAMS["critical6"])
            if path.cls in per_class
        }
        baseline = None
        if self.baseline is not None:
            base_critical = self.baseline["classes"].get("critical", {})
            baseline = {
                "policy": self.scenario.baseline,
                "outage_ms": base_critical.get("outage_ms"),
                "lost_packets": base_critical.get("lost_packets"),
                "report": self.baseline,
            }
        return {
            "scenario": self.scenario.name,
            "policy": self.policy_file or self.scenario.policy,
            "baseline": baseline,
            "title": self.scenario.title,
            "passed": all(r["passed"] for r in results),
            "expectations": results,
            "outage_ms": critical.get("outage_ms"),
            "lost_packets": critical.get("lost_packets"),
            "families": families,
            "switches": {c: sum(1 for d in decisions if d["class"] == c) for c in self.policy.classes},
            "classes": per_class,
            "final": {"classes": finals, "uplinks": states},
            "timeline": timeline,
            "states": [[round(t - self.t0, 3), ups, cls] for t, ups, cls in observer.samples],
            "buckets": {
                cls: [
                    [round(b[0] - self.t0, 3), {nat.get(k, k): v for k, v in b[1].items()}]
                    for b in t.get("buckets", [])
                ]
                for cls, t in traffic.items()
            },
        }

    def measure(self, e: Expect) -> dict[str, Any]:
        """One expectation, measured on this run or (`of: baseline`) on the baseline run: its streams, its
        decisions, drills, alarms, clock and modems, and where its classes and uplinks ended."""
        run = self if e.of == "policy" else self.base
        if run is None:
            raise LabError(f"scenario {self.scenario.name}: an expectation of the baseline, but no baseline run")
        per_class, decisions, finals, states = run.per_class, run.decisions, run.finals, run.states
        c = per_class.get(e.cls or "", {})
        value: Any
        match e.what:
            case "outage_ms" | "lost_packets" | "received":
                value = c.get(e.what)
            case "delivered":
                value = c.get("received")
            case "switches":
                value = sum(1 for d in decisions if d["class"] == e.cls)
            case "final_uplink":
                value = finals.get(e.cls or "")
            case "carried_by":
                value = sorted(u for u, n in c.get("carried_by", {}).items() if n >= 10)
            case "ends_on":
                # Where the stream's last packets came from: the class's final uplink, unless a stale NAT
                # binding (conntrack not flushed on the switch) still names the one it left.
                changes = c.get("path_changes", [])
                carried = list(c.get("carried_by", {}))
                value = changes[-1]["to"] if changes else (carried[0] if len(carried) == 1 else None)
            case "never_on":
                value = sorted(
                    set(c.get("carried_by", {}))
                    | {d["uplink"] for d in decisions if d["class"] == e.cls and d["uplink"]}
                )
            case "uplink_state":
                value = states.get(e.uplink or "")
            case "clock_state":
                value = run.clock.get("state")
            case "falseticker":
                value = sorted(s["server"] for s in run.clock.get("sources", []) if s.get("state") == "falseticker")
            case "clock_steps":
                value = [round(s["delta_s"], 3) for s in run.clock.get("steps", []) if not s["explained"]]
            case "drill_verdict":  # the last drill of the uplink: pass, fail, aborted, production
                value = next((d["verdict"] for d in reversed(run.drills) if d["uplink"] == e.uplink), None)
            case "modem_profile":
                value = run.profiles.get(e.uplink or "")
            case "warning_lead_s":
                # How long before the class lost its last route the failed drill of the uplink warned.
                warned = next((a["mono"] for a in run.alarms if a["cause"]["code"] == "drill-failed"), None)
                lost = next(
                    (
                        d["mono"]
                        for d in decisions
                        if d["class"] == e.cls and d["route"] in ("unreachable", "blackhole")
                    ),
                    None,
                )
                value = None if warned is None or lost is None else round(lost - warned, 3)
        ok = value is not None
        numeric = isinstance(value, int | float)
        if ok and numeric and e.max is not None:
            ok = float(value) <= e.max
        if ok and numeric and e.min is not None:
            ok = float(value) >= e.min
        if ok and e.equals is not None:
            ok = value == e.equals
        if ok and e.uplinks is not None and e.what == "carried_by":
            ok = value == sorted(e.uplinks)
        if e.what == "never_on":
            ok = e.uplink not in (value or [])
        limit = {
            k: v
            for k, v in (
                ("max", e.max),
                ("min", e.min),
                ("equals", e.equals),
                ("uplinks", e.uplinks),
                ("uplink", e.uplink),
                ("any_of", e.any_of),
                ("server", e.server),
            )
            if v is not None
        }
        if ok and e.any_of is not None:
            ok = value in e.any_of
        if e.what == "falseticker":
            ok = value == ([e.server] if e.server else [])
        if e.what == "clock_steps":
            ok = len(value or []) >= 1
        of = {"of": e.of} if e.of != "policy" else {}
        return {"what": e.what, "class": e.cls, **of, **limit, "measured": value, "passed": bool(ok)}


def with_silent_tail(summary: dict[str, Any], stopped: float, sent: int | None) -> dict[str, Any]:
    """A UDP stream's summary counting what never came back: the receiver measures gaps between arrivals,
    so a stream that died for good (a family left with no working uplink) would show no outage. The
    silence from the last arrival to when the sender stopped is an outage too, and what the sender sent
    after the last packet that arrived is lost."""
    if not summary.get("received"):
        return summary
    tail_ms = round(max(0.0, stopped - summary["last_t"]) * 1000, 3)
    out = {**summary, "tail_ms": tail_ms, "max_gap_ms": max(summary["max_gap_ms"], tail_ms)}
    if sent is not None:
        out["lost"] = summary["lost"] + max(0, sent - 1 - summary["last_seq"])
    return out


def _sent(log: Path) -> int | None:
    """How many datagrams a sender sent, from its last line ({"sent": N}); None if it said nothing."""
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["sent"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def _family_match(step: Step) -> str:
    """The nftables selector for a step's family ("" for both), in an inet table."""
    return {None: "", "ipv4": "meta nfproto ipv4 ", "ipv6": "meta nfproto ipv6 "}[step.family]


def _describe(r: dict[str, Any]) -> str:
    match r.get("kind"):
        case "decision":
            return f"{r['class']}: {r.get('from') or '-'} -> {r.get('uplink') or r.get('route')} ({r['cause']['code']})"
        case "uplink":
            return f"{r['uplink']}: {r['from']} -> {r['to']} ({r['cause']['code']})"
        case "standby":
            return f"{r['uplink']}: {r['action']}"
        case "clock":
            return f"clock {r['from']} -> {r['to']}"
        case "drill":
            verdict = f" {r['verdict']}" if "verdict" in r else ""
            return f"drill {r['uplink']}: {r['from']} -> {r['to']}{verdict} ({r['cause']['code']})"
        case "profile":
            return f"{r['uplink']} profile {r['profile']}: {r['from']} -> {r['to']} ({r['cause']['code']})"
        case "profile-switch":
            return f"{r['uplink']}: {r['how']} switch to {r['profile']} ({r['cause']['code']})"
        case "drill-check":
            return f"drill {r['uplink']} {r['check']}: {r['value']}{r['unit']} {'ok' if r['ok'] else 'FAILED'}"
    return ""


def run(lab: Lab, name: str, out: Path, progress: Callable[[str], None] = print) -> dict[str, Any]:
    scenario = load_scenario(name)
    try:
        policy = load_policy(ROOT / scenario.policy)
    except PolicyError as exc:
        raise LabError(str(exc)) from None
    unknown = unknown_classes(scenario, policy)
    if unknown:
        raise LabError(f"scenario {name}: {scenario.policy} has no class {', '.join(unknown)}")
    r = Run(lab, scenario, policy, out, progress)
    try:
        return r.execute()
    finally:
        r.kill_daemon(signal.SIGKILL)
