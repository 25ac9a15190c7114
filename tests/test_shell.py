"""The daemon's shell: an acyclic import graph, one command table, control through its interface, reload per service."""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from failoverd.control import unix
from failoverd.control.commands import COMMANDS, BadRequest, dispatch, to_event, validate
from failoverd.control.engineonly import EngineGateway
from failoverd.control.unix import ControlSocket, may_change, peer_groups, peergroups_option
from failoverd.ctl import build_parser, to_request
from failoverd.engine import events as ev
from failoverd.observe.journal import Journal
from failoverd.policy.model import Policy
from failoverd.services.base import Applied, NeedsRestart, Reconfigured
from failoverd.services.history import History
from failoverd.services.supervisor import Supervisor, reload
from failoverd.statedir import StateDir

PACKAGE = Path(__file__).resolve().parent.parent / "failoverd"
POLICY = """
site: north
uplinks:
  - {name: fiber, interface: eth0, next_hop: 198.18.0.1}
  - {name: mobile, interface: wwan0, next_hop: 198.18.1.1}
classes: [{name: dispatch, path: [fiber, mobile]}]
"""


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every import of one failoverd module by another, wherever it stands (function bodies and
    TYPE_CHECKING blocks too: a cycle hidden in a function is still a cycle)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from failoverd.engine import effects` imports the module failoverd.engine.effects;
                # `from failoverd.policy import load_policy` imports the package's name
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            for target in targets:
                t = target
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name and t.startswith("failoverd"):
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                found.append([*stack[stack.index(n) :], n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_nothing_under_failoverd_imports_in_a_circle() -> None:
    graph = import_graph()
    assert "failoverd.services.engine" in graph["failoverd.runtime"]  # the graph sees real imports
    assert cycles(graph) == []
    # and the checker finds one when there is one
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_control_reaches_the_daemon_only_through_its_interface() -> None:
    graph = import_graph()
    for module, imports in graph.items():
        if module.startswith("failoverd.control"):
            assert not {i for i in imports if i == "failoverd.runtime" or i.startswith("failoverd.services.")} - {
                "failoverd.services.base"  # Applied / NeedsRestart, what a service answers a reload
            }, module
    assert "failoverd.probes.kinds" not in graph["failoverd.probes.base"]


def test_one_kernel_writer() -> None:
    """Routes, rules, nftables and conntrack are written only through kernel/writer.py."""
    graph = import_graph()
    writers = {
        "failoverd.kernel.nft",
        "failoverd.kernel.conntrack",
        "failoverd.kernel.rtnl",
        "failoverd.kernel.netlink",
    }
    for module, imports in graph.items():
        if not module.startswith("failoverd.kernel.") and module != "failoverd.cli":  # cli: set_netns only
            assert not imports & writers, module
    assert "failoverd.kernel.writer" in graph["failoverd.services.engine"]


def test_failoverctl_is_built_from_the_command_table() -> None:
    parser = build_parser()
    help_text = parser.format_help()
    # `drill-run` in the table is `failoverctl drill run`: its help is the drill group's
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for group in {c.name.partition("-")[0] for c in COMMANDS.values() if "-" in c.name}:
        help_text += subcommands.choices[group].format_help()
    assert all(f"{c.name:<20}{c.help}" in help_text or c.help in help_text for c in COMMANDS.values())
    req = to_request(parser.parse_args(["failover", "dispatch", "--to", "mobile", "--for", "30m", "--reason", "x"]))
    assert req["cmd"] == "failover" and req["class"] == "dispatch" and req["to"] == "mobile" and req["for"] == "30m"
    assert req["by"].startswith("failoverctl:") and "force" not in req
    assert to_request(parser.parse_args(["release", "--all"]))["all"] is True
    assert to_request(parser.parse_args(["history"])) == {"cmd": "history", "last": 20}
    with pytest.raises(SystemExit):
        parser.parse_args(["release"])  # an override or --all
    with pytest.raises(SystemExit):
        parser.parse_args(["failover", "dispatch", "--to", "mobile"])  # a reason is required
    # whatever failoverctl builds, the table accepts as it is
    assert to_request(parser.parse_args(["drill", "run", "sat"]))["cmd"] == "drill-run"
    for argv in (
        ["status"],
        ["drain", "fiber", "--reason", "r", "--force"],
        ["explain", "dispatch"],
        ["clock"],
        ["drill", "status"],
        ["drill", "run", "sat"],
        ["report", "--since", "2h", "--plot", "x.png"],
        ["alarms"],
        ["ack", "uplink-down:fiber", "--reason", "crew on site"],
    ):
        validate(to_request(parser.parse_args(argv)))


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ([1], "JSON object"),
        ({"cmd": "reboot"}, "unknown command 'reboot'"),
        ({"cmd": "failover", "class": "dispatch", "to": "mobile"}, "missing reason"),
        (
            {"cmd": "failover", "class": "dispatch", "to": "mobile", "reason": "r", "force": 1},
            "'force' has the wrong type",
        ),
        ({"cmd": "history", "last": True}, "'last' has the wrong type"),
        ({"cmd": "history", "colour": "red"}, "unknown argument 'colour'"),
        ({"cmd": "release"}, "name an override"),
        ({"cmd": "drain", "uplink": "fiber", "reason": "r", "for": "soon"}, "for:"),
    ],
)
def test_the_table_refuses_a_malformed_request_with_its_reason(request_: Any, error: str) -> None:
    with pytest.raises(BadRequest, match=error):
        validate(request_)


def test_the_same_command_is_the_same_engine_event_everywhere() -> None:
    _, args = validate({"cmd": "failover", "class": "dispatch", "to": "mobile", "reason": "r", "for": "2m"})
    assert to_event("failover", args, "r1") == ev.ForceClass(
        "r1", "dispatch", "mobile", "r", 120.0, False, "failoverctl"
    )
    _, args = validate({"cmd": "release", "all": True, "by": "sim"})
    assert to_event("release", args) == ev.Release("", None, "sim")


async def test_commands_through_the_interface_reach_the_engine() -> None:
    g = EngineGateway(POLICY)
    reply = await dispatch(g, {"cmd": "drain", "uplink": "fiber", "reason": "splice", "by": "t"})
    assert reply["ok"] and g.state.classes["dispatch"].uplink == "mobile", reply
    reply = await dispatch(g, {"cmd": "explain", "class": "dispatch"})
    assert reply["ok"] and any("drained" in line for line in reply["chain"]), reply
    reply = await dispatch(g, {"cmd": "explain", "class": "bulk"})
    assert not reply["ok"] and 'unknown class "bulk"' in reply["error"]


async def test_a_reader_of_the_socket_may_not_change_anything(tmp_path: Path) -> None:
    g = EngineGateway(POLICY)
    sock = ControlSocket(g, str(tmp_path / "s"))
    line = json.dumps({"cmd": "drain", "uplink": "fiber", "reason": "r"}).encode()
    refused = await sock.answer(line, writable=False)
    assert not refused["ok"] and "may only read" in refused["error"]
    assert g.state.classes["dispatch"].uplink != "mobile"
    assert (await sock.answer(b'{"cmd": "status"}', writable=False))["ok"]
    assert (await sock.answer(line, writable=True))["ok"]
    assert "not JSON" in (await sock.answer(b"{", writable=True))["error"]
    # who may write: root and the daemon's user always; others only through the socket's group
    spec = g.policy.control
    assert may_change(spec, 0, set())
    assert not may_change(spec, 65534, {65534})
    assert may_change(replace(spec, socket_group="root"), 65534, {0})


class Recorder:
    """A service that records the reloads it is asked to take."""

    name: ClassVar[str] = "recorder"

    def __init__(self, answer: Reconfigured) -> None:
        self.answer = answer
        self.seen: list[str] = []

    async def run(self) -> None:
        pass

    async def reconfigure(self, policy: Policy) -> Reconfigured:
        self.seen.append(policy.site)
        return self.answer

    def status(self) -> dict[str, Any]:
        return {}


class Restarter(Recorder):
    name: ClassVar[str] = "restarter"


async def test_a_reload_asks_every_service_and_reports_each(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.replace("north", "south"))
    g = EngineGateway(POLICY)
    history = History(Journal(StateDir(None)))
    ok, later = Recorder(Applied("3 probes")), Restarter(NeedsRestart("settings read at start"))
    report = await reload(path, g, [ok, later], history)
    assert report["ok"] and report["services"] == {
        "recorder": "applied: 3 probes",
        "restarter": "needs restart: settings read at start",
    }
    assert report["needs_restart"] == ["restarter: settings read at start"]
    assert ok.seen == later.seen == ["south"]
    path.write_text(POLICY + "bogus: 1\n")
    report = await reload(path, g, [ok], history)
    assert not report["ok"] and "bogus" in report["problems"][0] and ok.seen == ["south"]
    assert [r["ok"] for r in history.last(5)] == [True, False]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
async def test_the_kernel_names_the_peer_and_a_stranger_may_only_read() -> None:
    """A real socket and a real client process running as nobody: SO_PEERCRED, not what it claims."""
    g = EngineGateway(POLICY + "control: {socket_mode: '0666'}\n")
    where = Path(tempfile.mkdtemp(prefix="fo-ctl-"))
    where.chmod(0o755)  # nobody must reach the socket
    sock = ControlSocket(g, str(where / "control.sock"))
    server = asyncio.create_task(sock.run(), name="control-under-test")
    try:
        for _ in range(100):
            if (where / "control.sock").exists():
                break
            await asyncio.sleep(0.01)

        async def as_user(uid: int | None, request: dict[str, Any]) -> dict[str, Any]:
            # Debian's own python3: the venv's interpreter lives where nobody may not read.
            client = (
                "import json, socket, sys\n"
                "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                "s.sendall(sys.argv[2].encode() + b'\\n'); print(s.makefile().readline())\n"
            )
            cmd = ["/usr/bin/python3", "-c", client, str(where / "control.sock"), json.dumps(request)]
            done = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, user=uid, check=True)
            reply: dict[str, Any] = json.loads(done.stdout)
            return reply

        async def as_nobody(request: dict[str, Any]) -> dict[str, Any]:
            return await as_user(65534, request)

        drained = await as_nobody({"cmd": "drain", "uplink": "fiber", "reason": "not mine to do", "by": "root"})
        assert not drained["ok"] and "may only read" in drained["error"], drained
        assert g.state.classes["dispatch"].uplink != "mobile"
        status = await as_nobody({"cmd": "status"})
        assert status["ok"] and status["site"] == "north", status
        # root may; who asked is what the kernel says, the client's claim after it
        done = await as_user(None, {"cmd": "drain", "uplink": "fiber", "reason": "r", "by": "failoverctl:alice"})
        assert done["ok"], done
        assert [o.by for o in g.state.overrides] == ["local:root/failoverctl:alice"]
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        shutil.rmtree(where)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_the_kernel_names_the_peers_groups_even_after_it_is_gone() -> None:
    """Groups from SO_PEERGROUPS, as they were at connect: the peer's /proc may be hidden or gone."""
    where = Path(tempfile.mkdtemp(prefix="fo-ctl-"))
    where.chmod(0o755)
    try:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(where / "s"))
            (where / "s").chmod(0o666)
            server.listen()
            client = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"
            cmd = ["/usr/bin/python3", "-c", client, str(where / "s")]
            # the client connects and exits: its pid names nothing by the time the groups are asked
            subprocess.run(cmd, user=65534, group=65534, extra_groups=[100, 4242], check=True)
            conn, _ = server.accept()
            with conn:
                assert peer_groups(conn, 65534) == {65534, 100, 4242}
    finally:
        shutil.rmtree(where)


def test_so_peergroups_is_numbered_per_architecture_and_never_guessed() -> None:
    """parisc and sparc number SO_PEERGROUPS their own way; 59 there would read another option."""
    assert peergroups_option("x86_64") == peergroups_option("aarch64") == peergroups_option("mips64") == 59
    assert peergroups_option("parisc64") == 0x4034
    assert peergroups_option("sparc64") == 0x3D
    assert peergroups_option("vax") is None


def test_without_the_option_the_groups_come_from_proc() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peer_groups(a, os.getgid(), os.getpid(), option=None) == {os.getgid(), *os.getgroups()}
        assert peer_groups(a, 4242, 2**22 + 1, option=None) == {4242}  # a pid that is gone: the primary group


@contextlib.asynccontextmanager
async def serving(g: EngineGateway, where: Path) -> AsyncIterator[ControlSocket]:
    """A real control socket at where/control.sock, served in this loop until the block ends."""
    sock = ControlSocket(g, str(where / "control.sock"))
    server = asyncio.create_task(sock.run(), name="control-under-test")
    try:
        for _ in range(100):
            if (where / "control.sock").exists():
                break
            await asyncio.sleep(0.01)
        yield sock
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


async def test_an_oversized_request_is_refused_with_a_reason(tmp_path: Path) -> None:
    async with serving(EngineGateway(POLICY), tmp_path):
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "control.sock"))
        writer.write(b'{"cmd": "status", "pad": "' + b"x" * (2 * unix.MAX_REQUEST) + b'"}\n')
        await writer.drain()
        reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
        writer.close()
    assert not reply["ok"] and f"at most {unix.MAX_REQUEST} bytes" in reply["error"], reply


HOLDER = """
import json, socket, sys
path, count = sys.argv[1], int(sys.argv[2])
held = []
for _ in range(count):  # all connected before any asks: each is held while the next comes
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    held.append(s)
for s in held:
    try:
        s.sendall(b'{"cmd": "status"}\\n')
    except BrokenPipeError:  # turned away before it asked: the reason is there to read
        pass
    reply = json.loads(s.makefile().readline())
    print("ok" if reply["ok"] else reply["error"])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
async def test_a_user_other_than_root_holds_a_few_connections_at_once() -> None:
    """Each connection costs the daemon a descriptor: a reader must not be able to use them all up."""
    where = Path(tempfile.mkdtemp(prefix="fo-ctl-"))
    where.chmod(0o755)
    g = EngineGateway(POLICY + "control: {socket_mode: '0666'}\n")
    try:
        async with serving(g, where) as sock:
            path = str(where / "control.sock")

            async def hold(uid: int | None, count: int) -> list[str]:
                cmd = ["/usr/bin/python3", "-c", HOLDER, path, str(count)]
                done = await asyncio.to_thread(
                    subprocess.run, cmd, capture_output=True, text=True, user=uid, check=True
                )
                return done.stdout.splitlines()

            async def closed() -> None:
                # The holder has exited; the daemon sees its connections close as its loop gets to them.
                for _ in range(200):
                    if sock.held.total() == 0 and sock.clients == 0:
                        return
                    await asyncio.sleep(0.01)
                raise AssertionError(f"connections still held: {sock.held}, {sock.clients} clients")

            answers = await hold(65534, unix.PER_USER + 3)
            assert answers[: unix.PER_USER] == ["ok"] * unix.PER_USER, answers
            assert all("too many connections from nobody" in a for a in answers[unix.PER_USER :]), answers
            await closed()
            assert await hold(65534, 1) == ["ok"]  # its connections were given back as they closed
            assert await hold(None, unix.PER_USER + 3) == ["ok"] * (unix.PER_USER + 3)  # root: never turned away
            await closed()
            # All users together hold at most OTHERS_AT_ONCE.
            sock.held.update({1000 + n: 1 for n in range(unix.OTHERS_AT_ONCE)})
            assert "the control socket is busy" in (await hold(65534, 1))[0]
            assert await hold(None, 1) == ["ok"]
    finally:
        shutil.rmtree(where)


class Broken(Recorder):
    """A service whose reconfigure raises (a bug, a chmod on a vanished socket)."""

    name: ClassVar[str] = "broken"

    async def reconfigure(self, policy: Policy) -> Reconfigured:
        raise PermissionError("socket vanished")


async def test_a_reload_outlives_a_service_that_fails_and_a_file_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    g = EngineGateway(POLICY)
    history = History(Journal(StateDir(None)))
    ok, later = Recorder(Applied()), Restarter(Applied())
    report = await reload(path, g, [ok, Broken(Applied()), later], history)
    assert not report["ok"] and report["services"]["broken"].startswith("failed: PermissionError")
    assert ok.seen == later.seen == ["north"]  # the others still took it
    path.write_bytes(b"site: \xff\xfe\n")
    report = await reload(path, g, [ok], history)
    assert not report["ok"] and "policy refused" in report["text"], report
    # MQTT switched on by a reload cannot start without a restart, and says so
    path.write_text(POLICY + "control: {mqtt: {enabled: true, host: broker.example}}\n")
    report = await reload(path, g, [ok], history)
    assert report["ok"] and report["services"]["mqtt"].startswith("needs restart"), report


async def test_the_supervisor_answers_every_reload_even_when_one_raises(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    g = EngineGateway(POLICY)
    supervisor = Supervisor(path, g, History(Journal(StateDir(None))), alarm=g.alarm)

    class Exploding(Recorder):
        name: ClassVar[str] = "exploding"

        def status(self) -> dict[str, Any]:
            return {"fine": True}

    task = asyncio.create_task(supervisor.run([Exploding(Applied())]), name="supervisor-under-test")
    try:
        assert (await supervisor.ask())["ok"]
        assert supervisor.statuses() == {"exploding": {"fine": True}}
        path.unlink()  # not even readable now: refused, and the next reload is still heard
        assert not (await supervisor.ask())["ok"]
        # While the file on disk is not the policy in force, an alarm says so; a good reload clears it.
        assert [(a.id, a.state) for a in g.alarms] == [("reload-refused:policy", "raised")]
        assert "policy refused" in g.alarms[0].cause.text
        assert "reload-refused:policy" in g.state.alarms
        path.write_text(POLICY)
        assert (await supervisor.ask())["ok"]
        assert [(a.id, a.state) for a in g.alarms][-1] == ("reload-refused:policy", "cleared")
        assert not g.state.alarms
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
