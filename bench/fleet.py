"""Fleet control at scale: simulated gateways (failoverd's own MQTT code, the real engine) on a broker and a bridge.

`sudo python -m bench fleet [--sizes 100,1000,5000] [--topologies single,bridge] [--rounds 6]`.

Theory of operation. A simulated gateway is what a gateway's fleet side is: `failoverd.control.mqtt.Fleet`,
unchanged, in front of the real engine without probes or a kernel (`control.engineonly.EngineGateway`,
its uplinks judged UP before the start): it keeps a real MQTT session over TLS with a password, a
retained status and a last will, takes signed commands, steps the engine, writes its replay table to
its own state directory, replies, and publishes its new status, as the daemon does. Thousands fit on
one machine in a few worker processes, each running a share of them in one event loop.

Everything runs in a network namespace of its own (`fo-bench-fleet`), on its loopback: the brokers are
real mosquitto with the configuration `failoverd.broker` renders (TLS, password listener for the
gateways and the operator, the ACL; bridges authenticated by certificate). Topologies:
- single: every gateway and the operator on one broker;
- bridge: a central broker and two regional ones bridged to it (`render_bridge`); half of the gateways
  on each regional broker, the operator on the central one, so each command and reply crosses a bridge.

Each round the operator signs a fleet command (alternately `failover dispatch --to mobile` and
`release --all`, both through the engine) and publishes it once on `P/fleet/cmd`, as failoverctl does;
"reached" is when each gateway's Fleet took the request off its session (its `handle`), "answered"
when the operator had that gateway's reply, both from the publish, on the one monotonic clock all
processes here share. Then `failoverctl --fleet status --json` (the command itself, a new process)
collects every retained status; its wall time includes the interpreter's start.

What the figures mean: here N gateways share this machine's CPUs, so a fan-out's tail includes N times
one gateway's work done in turn (verify, engine step, state file, reply, status); on a real fleet each
gateway has its own CPU. The per-gateway CPU per command is printed beside it to tell the two apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import queue
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict

from bench.cost import cpu_seconds, memory_mib
from lab.netns import wait_for

ROOT = Path(__file__).resolve().parent.parent
NS = "fo-bench-fleet"
WORK = Path("/dev/shm/fo-bench-fleet")  # tmpfs: thousands of state directories, not this machine's disk
PREFIX = "failoverd"
PASSWORD = "bench-only-password"
SIZES = (100, 1000, 5000)
TOPOLOGIES = ("single", "bridge")
CENTRAL, CENTRAL_PW, EAST, WEST = 8883, 8884, 9883, 10883  # ports on the namespace's loopback
HOST = "127.0.0.1"
REPLY_WAIT = 60.0  # s: a round is over when every reply is in, or after this
PER_WORKER = 500  # gateways per worker process (one event loop each): at 1,000, both CPUs take a share
POLICY = """\
site: sim-0
uplinks:
  - {{name: fiber, interface: fib0, next_hop: 198.18.1.1, probes: [{{kind: udp-echo, target: 198.19.0.1}}]}}
  - {{name: mobile, interface: mob0, next_hop: 198.18.2.1, kind: cellular,
      probes: [{{kind: udp-echo, target: 198.19.0.1}}]}}
  - {{name: sat, interface: sat0, next_hop: 198.18.4.1, kind: satellite,
      probes: [{{kind: udp-echo, target: 198.19.0.1}}]}}
classes:
  - {{name: dispatch, match: [{{src: [198.18.10.0/24]}}], path: [fiber, mobile, sat]}}
  - {{name: bulk, path: [fiber, mobile], when_all_down: blackhole}}
control:
  mqtt: {{enabled: true, host: {host}, port: {port}, tls: true, ca_file: {pki}/ca.pem,
          password_file: {pki}/password, keys_file: {pki}/keys, keepalive: 60s}}
"""


def site_name(i: int) -> str:
    return f"sim-{i:05d}"


class WorkerConf(TypedDict):
    first: int  # its gateways are sim-<first> .. sim-<first + count - 1>
    count: int
    port: int  # of the broker they connect to, on the namespace's loopback
    pki: str
    state: str  # the directory of their state directories


def _dies_with_parent(argv: list[str], sig: str = "KILL") -> list[str]:
    """`argv`, sent `sig` when the process that started it dies, even by SIGKILL (a test's timeout), so
    that no broker or gateway outlives the run (util-linux setpriv: no preexec_fn, which threads make unsafe)."""
    return ["setpriv", f"--pdeathsig={sig}", "--", *argv]


# -- a worker: a share of the fleet in one event loop --------------------------------------------------
async def worker(conf: WorkerConf) -> None:
    """Run gateways `first`..`first + count - 1` until stdin closes; on each `report` line, print the
    times their requests arrived since the last report, this process's RSS and CPU seconds."""
    from failoverd.control.engineonly import EngineGateway  # noqa: PLC0415
    from failoverd.control.mqtt import Fleet  # noqa: PLC0415
    from failoverd.engine import events as ev  # noqa: PLC0415
    from failoverd.engine.state import initial_state  # noqa: PLC0415
    from failoverd.engine.step import step  # noqa: PLC0415
    from failoverd.observe.logging import configure  # noqa: PLC0415
    from failoverd.policy.load import parse_policy_text  # noqa: PLC0415
    from failoverd.statedir import StateDir  # noqa: PLC0415

    configure("info", json=True)  # a gateway's own log lines are part of its cost; stderr is a file
    arrived: list[float] = []

    class BenchFleet(Fleet):
        async def handle(self, topic: str, payload: Any) -> dict[str, Any] | None:
            arrived.append(time.monotonic())
            return await super().handle(topic, payload)

    pki = conf["pki"]
    base = parse_policy_text(POLICY.format(host=HOST, port=conf["port"], pki=pki), "bench-fleet.yaml")
    # Every uplink judged UP before the start, as on a healthy gateway: made once, shared (it is frozen).
    state, now = initial_state(base, 0.0), 0.0
    while any(u.status != "UP" for u in state.uplinks.values()):
        now += 0.5
        if now > 600:
            raise RuntimeError(f"the simulated uplinks never came UP: {state.uplinks}")
        batch = tuple(ev.ProbeResult(n, u.probes[0].key, True, 0.01) for n, u in base.uplinks.items())
        state, _ = step(state, ev.ProbeBatch(batch), base, now)
    fleets = []
    for i in range(conf["first"], conf["first"] + conf["count"]):
        site = site_name(i)
        mqtt = replace(base.control.mqtt, username=site)
        policy = replace(base, site=site, control=replace(base.control, mqtt=mqtt))
        gateway = EngineGateway(policy=policy, state=state)
        fleets.append(BenchFleet(gateway, mqtt, StateDir.create(Path(conf["state"]) / site)))

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def control() -> None:
        shown = -1
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    line = await reader.readline()
                    if not line:
                        raise asyncio.CancelledError  # the runner is gone, or says stop: end every session
                    if line.strip() == b"report":
                        me = os.getpid()
                        out = {"arrived": list(arrived), "rss_mib": memory_mib(me)["VmRSS"], "cpu_s": cpu_seconds(me)}
                        arrived.clear()
                        print(json.dumps(out), flush=True)
            connected = sum(f.connected for f in fleets)
            if connected != shown:
                shown = connected
                print(json.dumps({"connected": connected}), flush=True)

    async with asyncio.TaskGroup() as tg:
        for f in fleets:
            tg.create_task(f.run())
        await control()


# -- the runner --------------------------------------------------------------------------------------
def _sh(*cmd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def prepare(sites: int) -> Path:
    """The PKI (CA, server, bridges), the command key, and a password file for `sites` gateways and op/noc."""
    from failoverd.broker import BrokerSpec, make_pki, render_acl  # noqa: PLC0415
    from failoverd.control.signing import write_keypair  # noqa: PLC0415

    pki = WORK / "pki"
    shutil.rmtree(WORK, ignore_errors=True)
    make_pki(pki, "broker.bench", [HOST], [], operators=["noc"], bridges=["east", "west"], days=2)
    _, pub = write_keypair("noc", pki)
    (pki / "keys").write_text(pub.read_text())
    (pki / "password").write_text(PASSWORD + "\n")
    users = [site_name(i) for i in range(sites)] + ["op/noc"]
    passwd = pki / "failoverd.passwd"
    passwd.write_text("".join(f"{u}:{PASSWORD}\n" for u in users))
    _sh("mosquitto_passwd", "-U", str(passwd))  # hashed in place
    (pki / "failoverd.acl").write_text(render_acl(BrokerSpec(operators=("noc",), bridges=("east", "west"))))
    return pki


@dataclass
class Broker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Run:
    """One topology at one size: its brokers and workers, torn down by `close`."""

    topology: str
    sites: int
    pki: Path
    brokers: list[Broker] = field(default_factory=list)
    workers: list[subprocess.Popen[str]] = field(default_factory=list)
    connected: list[int] = field(default_factory=list)
    lines: list[queue.Queue[str | None]] = field(default_factory=list)  # each worker's, by its reader thread

    def start_brokers(self) -> None:
        from failoverd.broker import BridgeSpec, BrokerSpec, render_bridge, render_conf  # noqa: PLC0415

        etc = str(self.pki)
        layout = {
            "central": BrokerSpec(
                operators=("noc",), auth="both", port=CENTRAL, password_port=CENTRAL_PW, bind=HOST, etc=etc
            )
        }
        if self.topology == "single":
            layout = {"central": BrokerSpec(operators=("noc",), auth="password", port=CENTRAL_PW, bind=HOST, etc=etc)}
        else:
            for name, port in (("east", EAST), ("west", WEST)):
                layout[name] = BrokerSpec(operators=("noc",), auth="password", port=port, bind=HOST, etc=etc)
        for name, spec in layout.items():
            conf = render_conf(spec) + "\nuser root\npersistence false\n"  # the bench's files are root's alone
            if name != "central":
                conf += render_bridge(BridgeSpec(name=name, central=f"{HOST}:{CENTRAL}", etc=etc))
            path = self.pki / f"{name}.conf"
            path.write_text(conf)
            log = WORK / f"mosquitto-{name}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    _dies_with_parent(["mosquitto", "-c", str(path)]), stdout=out, stderr=subprocess.STDOUT
                )
            self.brokers.append(Broker(name, proc, log))
            port = spec.password_port if spec.auth == "both" else spec.port
            # The central broker first: a bridge that finds it closed waits restart_timeout to try again.
            wait_for(functools.partial(_listening, port), 10, what=f"mosquitto {name}")
        if self.topology == "bridge":
            central = WORK / "mosquitto-central.log"
            wait_for(lambda: all(f" as br/{n} (" in central.read_text() for n in ("east", "west")), 15, what="bridges")

    def start_workers(self) -> None:
        ports = [CENTRAL_PW] if self.topology == "single" else [EAST, WEST]
        n_workers = max(len(ports), -(-self.sites // PER_WORKER))
        n_workers += n_workers % len(ports)  # an equal number of workers on each regional broker
        share = -(-self.sites // n_workers)
        for w in range(n_workers):
            first, count = w * share, max(0, min(share, self.sites - w * share))
            if count == 0:
                continue
            conf: WorkerConf = {
                "first": first,
                "count": count,
                "port": ports[w * len(ports) // n_workers],
                "pki": str(self.pki),
                "state": str(WORK / "state"),
            }
            with (WORK / f"worker-{w}.log").open("w") as err:
                proc = subprocess.Popen(
                    _dies_with_parent([sys.executable, "-m", "bench.fleet", "worker", json.dumps(conf)]),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                )  # fmt: skip
            self.workers.append(proc)
            self.connected.append(0)
            # One reader per worker: a line is never left in a pipe's buffer while the runner waits on
            # another worker (select() on a buffered pipe sees the kernel's buffer, not Python's).
            lines: queue.Queue[str | None] = queue.Queue()
            self.lines.append(lines)
            threading.Thread(target=_pump, args=(proc, lines), daemon=True).start()

    def _read(self, w: int, timeout: float) -> dict[str, Any] | None:
        """The next message of worker `w`, or None after `timeout` seconds."""
        try:
            line = self.lines[w].get(timeout=timeout)
        except queue.Empty:
            return None
        if line is None:
            raise RuntimeError(f"worker {w} ended: see {WORK}/worker-{w}.log")
        msg: dict[str, Any] = json.loads(line)
        if "connected" in msg:
            self.connected[w] = msg["connected"]
        return msg

    def wait_connected(self, timeout: float) -> float:
        """Until every gateway has its session; how long that took."""
        start = time.monotonic()
        while sum(self.connected) < self.sites:
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"{sum(self.connected)} of {self.sites} gateways connected in {timeout:g}s")
            for w in range(len(self.workers)):
                while self._read(w, 0.05) is not None:
                    pass
        return time.monotonic() - start

    def report(self) -> list[dict[str, Any]]:
        """Each worker's arrivals since the last report, RSS and CPU."""
        out = []
        for proc in self.workers:
            assert proc.stdin is not None
            proc.stdin.write("report\n")
            proc.stdin.flush()
        for w in range(len(self.workers)):
            while True:
                msg = self._read(w, 120)
                if msg is None:
                    raise RuntimeError(f"worker {w} did not report within 120s: see {WORK}/worker-{w}.log")
                if "arrived" in msg:
                    out.append(msg)
                    break
        return out

    def close(self) -> None:
        for proc in self.workers:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
        for proc in self.workers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for b in self.brokers:
            b.proc.send_signal(signal.SIGTERM)
        for b in self.brokers:
            try:
                b.proc.wait(10)
            except subprocess.TimeoutExpired:
                b.proc.kill()
                b.proc.wait()


def _listening(port: int) -> bool:
    return f"{HOST}:{port} " in _sh("ss", "-ltnH").stdout


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line)
    lines.put(None)  # the worker ended


def _ctl_args(pki: Path) -> list[str]:
    return [
        "--mqtt", f"{HOST}:{CENTRAL_PW}", "--tls", "--ca-file", str(pki / "ca.pem"),
        "--username", "op/noc", "--password-file", str(pki / "password"),
    ]  # fmt: skip


async def command(pki: Path, request: dict[str, Any], sites: int) -> tuple[float, dict[str, float], int]:
    """Sign and publish one fleet command as failoverctl does; the publish time and each site's reply
    time (monotonic), and how many replies said ok."""
    from failoverd.control.signing import fleet_dest, load_private_key, sign  # noqa: PLC0415
    from failoverd.ctl import broker_client, build_parser, take_reply  # noqa: PLC0415

    args = build_parser().parse_args([*_ctl_args(pki), "--fleet", "--wait", "20", "status"])
    private = load_private_key(pki / "noc.key")
    rid = uuid.uuid4().hex
    replies: dict[str, float] = {}
    ok = 0
    async with broker_client(args, rid) as client:
        await client.subscribe(f"{PREFIX}/+/reply", qos=1)
        signed = sign({**request, "id": rid}, "noc", private, time.time(), fleet_dest(PREFIX))
        payload = json.dumps(signed)
        start = time.monotonic()
        await client.publish(f"{PREFIX}/fleet/cmd", payload, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REPLY_WAIT):
                async for message in client.messages:
                    reply = take_reply(str(message.topic), message.payload, rid, PREFIX)
                    if reply is not None and reply["site"] not in replies:
                        replies[reply["site"]] = time.monotonic()
                        ok += bool(reply.get("ok"))
                        if len(replies) >= sites:
                            break
    return start, replies, ok


def fleet_status(pki: Path) -> dict[str, Any]:
    """`failoverctl --fleet status --summary --json`, timed."""
    cmd = [
        sys.executable,
        "-m",
        "failoverd.ctl",
        *_ctl_args(pki),
        "--json",
        "--wait",
        "30",
        "--fleet",
        "status",
        "--summary",
    ]
    start = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False, timeout=120)
    took = time.monotonic() - start
    if r.returncode != 0:
        raise RuntimeError(f"failoverctl --fleet status: {r.stderr.strip() or r.stdout.strip()}")
    view = json.loads(r.stdout)
    return {"s": took, "complete": view["complete"], "summary": view["summary"]}


def ctl_command(pki: Path) -> dict[str, Any]:
    """`failoverctl --fleet release --all` itself, timed: it reads the retained statuses, publishes, and
    returns once every site that was online has answered."""
    cmd = [sys.executable, "-m", "failoverd.ctl", *_ctl_args(pki), "--key-file", str(pki / "noc.key"), "--json"]
    cmd += ["--wait", "60", "--fleet", "release", "--all"]
    start = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False, timeout=180)
    took = time.monotonic() - start
    replies = json.loads(r.stdout) if r.stdout.strip() else []
    return {"s": took, "exit": r.returncode, "replies": len(replies), "ok": sum(bool(x.get("ok")) for x in replies)}


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    v = sorted(values)
    return {"p50": statistics.median(v), "p99": v[min(len(v) - 1, int(len(v) * 0.99))], "max": v[-1]}


def measure(topology: str, sites: int, rounds: int, pki: Path) -> dict[str, Any]:
    run = Run(topology, sites, pki)
    try:
        run.start_brokers()
        run.start_workers()
        connect_s = run.wait_connected(60 + sites / 20)
        # Every retained status visible to the operator before the first command.
        everyone = lambda: fleet_status(pki)["summary"]["online"] >= sites  # noqa: E731
        wait_for(everyone, 60 + sites / 50, 1.0, what="every retained status")
        run.report()  # a fresh start for the counters
        broker_cpu = {b.name: cpu_seconds(b.proc.pid) for b in run.brokers}
        requests: list[dict[str, Any]] = [
            {"cmd": "failover", "class": "dispatch", "to": "mobile", "reason": "bench", "for": "10m"},
            {"cmd": "release", "all": True},
        ]
        out_rounds = []
        reached_all: list[float] = []
        answered_all: list[float] = []
        before = run.report()
        for r in range(rounds):
            start, replies, ok = asyncio.run(command(pki, requests[r % 2], sites))
            got = run.report()
            # A request that arrived after an earlier round gave up on it (REPLY_WAIT) is not this round's.
            arrived = [t - start for w in got for t in w["arrived"] if t >= start]
            answered = [t - start for t in replies.values()]
            reached_all += arrived
            answered_all += answered
            out_rounds.append(
                {
                    "cmd": requests[r % 2]["cmd"],
                    "reached": len(arrived),
                    "answered": len(replies),
                    "ok": ok,
                    "reach_s": _spread(arrived),
                    "answer_s": _spread(answered),
                }
            )
            print(f"  {topology} {sites}: round {r + 1}: {out_rounds[-1]['answered']} answered, "
                  f"p99 {out_rounds[-1]['answer_s']['p99']}", flush=True)  # fmt: skip
            time.sleep(1.0)  # the statuses the command caused settle before the next
        after = run.report()
        cpu_gw = sum(a["cpu_s"] - b["cpu_s"] for a, b in zip(after, before, strict=True))
        broker_cpu_s = {b.name: cpu_seconds(b.proc.pid) - broker_cpu[b.name] for b in run.brokers}
        statuses = [fleet_status(pki) for _ in range(3)]
        ctl = ctl_command(pki)
        return {
            "topology": topology,
            "sites": sites,
            "workers": len(run.workers),
            "connect_s": connect_s,
            "rounds": out_rounds,
            "reach_s": _spread(reached_all),  # every site of every round
            "answer_s": _spread(answered_all),
            "answered_all": all(r["answered"] == sites and r["ok"] == sites for r in out_rounds),
            "status": statuses,
            # Each collection saw every site, and ended with its marker: what bench/README.md promises.
            "status_complete": all(s["complete"] and s["summary"]["sites"] == sites for s in statuses),
            "failoverctl_command": ctl,
            "broker_rss_mib": {b.name: memory_mib(b.proc.pid)["VmRSS"] for b in run.brokers},
            "broker_cpu_ms_per_command": {n: 1000 * s / rounds for n, s in broker_cpu_s.items()},
            "gateway_rss_kib": 1024 * sum(a["rss_mib"] for a in after) / sites,
            "gateway_cpu_ms_per_command": 1000 * cpu_gw / sites / rounds,
        }
    finally:
        run.close()


def run(sizes: list[int], topologies: list[str], rounds: int) -> dict[str, Any]:
    """Every topology at every size, in the namespace this process runs in."""
    need = max(sizes) * 2 + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))  # mosquitto inherits it
    pki = prepare(max(sizes))
    results = []
    for topology in topologies:
        for n in sizes:
            print(f"fleet: {topology}, {n} gateways", flush=True)
            results.append(measure(topology, n, rounds, pki))
    return {"rounds": rounds, "per_worker": PER_WORKER, "runs": results}


def parser(add_help: bool = True) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench fleet", add_help=add_help)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="gateways (default 100,1000,5000)")
    ap.add_argument("--topologies", default=",".join(TOPOLOGIES), help="single, bridge (default both)")
    ap.add_argument("--rounds", type=int, default=6, help="fleet commands at each size (default 6)")
    return ap


def _end_namespace() -> None:
    """Every process still in the namespace (ours: nothing else runs there), then the namespace."""
    pids = subprocess.run(["ip", "netns", "pids", NS], capture_output=True, text=True, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)


def in_namespace(argv: list[str]) -> dict[str, Any]:
    """Run the measurement in `fo-bench-fleet` (made here, removed at the end, also on failure); its
    files (a throw-away PKI, the gateways' state) are removed after a run that succeeded, kept with the
    logs after one that failed."""
    if os.geteuid() != 0:
        raise SystemExit("the fleet benchmark needs root (a network namespace of its own); run with sudo")
    _end_namespace()  # a run killed before its clean-up
    _sh("ip", "netns", "add", NS)
    out = WORK.parent / "fo-bench-fleet.json"
    try:
        _sh("ip", "-n", NS, "link", "set", "lo", "up")
        inner = ["ip", "netns", "exec", NS, sys.executable, "-m", "bench.fleet", "inner", str(out), *argv]
        r = subprocess.run(_dies_with_parent(inner, "TERM"), cwd=ROOT, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"fleet benchmark failed (exit {r.returncode}); logs in {WORK}")
        doc: dict[str, Any] = json.loads(out.read_text())
        shutil.rmtree(WORK, ignore_errors=True)
        return doc
    finally:
        _end_namespace()
        out.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    """`python -m bench.fleet worker CONF` is one worker; `inner OUT ARGS` the runner inside the namespace."""
    if argv[:1] == ["worker"]:
        with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
            asyncio.run(worker(json.loads(argv[1])))
        return 0
    if argv[:1] == ["inner"]:
        # SIGTERM (the runner died: _dies_with_parent) ends the run through its clean-up.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        args = parser().parse_args(argv[2:])
        sizes = [int(s) for s in args.sizes.split(",") if s]
        topologies = [t for t in args.topologies.split(",") if t]
        bad = [t for t in topologies if t not in TOPOLOGIES]
        if bad:
            raise SystemExit(f"unknown topology: {', '.join(bad)} (choose from {', '.join(TOPOLOGIES)})")
        Path(argv[1]).write_text(json.dumps(run(sizes, topologies, args.rounds)))
        return 0
    parser().parse_args(argv)  # refused here, before a namespace is made
    try:
        print(json.dumps(in_namespace(argv), indent=1))
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
