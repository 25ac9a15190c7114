"""The shipped polkit rule under the real polkitd: the daemon's user, confined as the unit confines it, may switch
a modem's profile through ModemManager's API; another user may not; without the rule, neither may.

Real here: polkitd (Debian's, with its JavaScript engine) reading systemd/polkit/50-failoverd.rules and
ModemManager's installed polkit actions; a dbus-daemon with the system bus's default policy and the
installed packages' bus rules (ModemManager's: who may call which method); the modem service's own
code (tests/modem_switches.py) reaching that bus at /run/dbus/system_bus_socket with no address given,
under the unit's user, capabilities, system-call filter and address families (tests/unitfile.py) and
its ProtectSystem=strict, ProtectHome=yes and ProtectProc= (unitfile.mount_sandbox). Simulated:
ModemManager itself (lab/mmsim.py), which asks polkitd as ModemManager 1.20 does (the caller's bus
name, the same action ids, Core.Unauthorized when refused); no modem here could answer otherwise.
Everything runs in mount namespaces of its own: the machine's polkit rules, users and system bus are
not touched.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import unitfile
from mmbus import POLKITD, launch_mmsim, start_polkitd, start_system_bus, stop, user_database

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"  # as in tests/integration/test_confined.py: the venv's packages on PYTHONPATH
MM_ACTIONS = Path("/usr/share/polkit-1/actions/org.freedesktop.ModemManager1.policy")
MM_BUS_RULES = Path("/etc/dbus-1/system.d/org.freedesktop.ModemManager1.conf")


def _uid(name: str, fallback: int) -> int:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return fallback


# The unit's user; on a machine without it, polkitd's user database (in its namespace) gets it.
FAILOVERD = _uid("failoverd", 64010)
OTHER = 64011  # a user with no rule of its own: "mallory" to polkitd
DEVICE_CONTROL = "org.freedesktop.ModemManager1.Device.Control"


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root: mount namespaces, switching users, owning ModemManager's bus name"
    for need in (POLKITD, "/usr/bin/pkcheck", MM_ACTIONS, MM_BUS_RULES, "/etc/polkit-1/rules.d"):
        if not Path(need).exists():
            return f"{need} missing (scripts/bootstrap installs polkitd, modemmanager)"
    for tool in ("dbus-daemon", "systemd-sysusers", "setpriv", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} missing (scripts/bootstrap installs it)"
    version = [SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"]
    if subprocess.run(version, capture_output=True, text=True, check=False).stdout.strip() != str(sys.version_info[:2]):
        return f"{SYSTEM_PYTHON} is not the venv's Python version: it cannot load the venv's packages"
    if any(p == Path(h) or Path(h) in p.parents for p in (ROOT, Path(sys.prefix)) for h in ("/home", "/root")):
        return "the clone or its venv is under /home or /root, which the unit's ProtectHome=yes hides"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")

IMEI = "359999000000077"
SIMULATED = {
    "equipment_id": IMEI,
    "enabled": False,  # as ModemManager leaves a modem no one has enabled: the switch must call Enable
    "polkit": True,
    "slots": [
        {"imsi": "204040000000001", "iccid": "8931040000000000001", "home": "20404", "operator_name": "carrier-a",
         "apn": "internet.a"},
        {"imsi": "204080000000002", "iccid": "8931080000000000002", "home": "20408", "operator_name": "carrier-b",
         "apn": "internet.b"},
    ],
    "networks": [{"code": "20404", "name": "carrier-a"}, {"code": "20408", "name": "carrier-b"}],
    "timing": {"enable_s": 0.05, "register_s": 0.2, "connect_s": 0.1, "slot_switch_s": 0.5, "register_timeout_s": 3.0},
}  # fmt: skip

POLICY = f"""
site: polkit
uplinks:
  - name: mobile
    interface: wwan0
    point_to_point: true
    kind: cellular
    modem: "{IMEI}"
    profiles:
      - {{name: carrier-a, slot: 1, apn: internet.a, plmns: ["20404"]}}
      - {{name: carrier-b, slot: 2, apn: internet.b, plmns: ["20408"]}}
      - {{name: carrier-b-manual, slot: 2, apn: internet.b, plmns: ["20408"], register: "20408"}}
    profile_switch: {{register_time: 3s, slot_switch_time: 3s}}
    probes: [{{kind: udp-echo, target: 192.0.2.10, interval: 1s, timeout: 1s}}]
classes:
  - name: default
    path: [mobile]
"""
# SetPrimarySimSlot, then Enable (the re-probed modem is disabled) and Simple.Connect; then Register.
SWITCHES = [["carrier-b", "slot", None, "internet.b"], ["carrier-b-manual", "register", "20408", "internet.b"]]


class World:
    """The bus, polkitd and the simulated ModemManager, in a directory the confined users may read."""

    def __init__(self, where: Path, bus_dir: Path, bus: str) -> None:
        self.where, self.bus_dir, self.bus = where, bus_dir, bus
        self.policy = where / "policy.yaml"
        self.policy.write_text(POLICY)
        self.policy.chmod(0o644)

    def switch_as(self, uid: int) -> tuple[list[dict[str, object]], str]:
        """The modem service's switches run as `uid`, confined as the unit confines failoverd: its
        answers (JSON lines) and all it said."""
        site = sysconfig.get_paths()["purelib"]
        cmd = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            *unitfile.mount_sandbox({"dbus": self.bus_dir}),
            *unitfile.setpriv(uid, uid, []),
            SYSTEM_PYTHON,
            str(ROOT / "tests" / "unitfile.py"),
            *([] if unitfile.mdwe_supported() else ["--no-mdwe"]),
            SYSTEM_PYTHON,
            str(ROOT / "tests" / "modem_switches.py"),
            "--policy",
            str(self.policy),
            "--uplink",
            "mobile",
            json.dumps(SWITCHES),
        ]
        env = {  # no DBUS_SYSTEM_BUS_ADDRESS: the service finds the bus where a gateway has it
            "PATH": os.environ["PATH"],
            "PYTHONPATH": f"{ROOT}:{site}",
            "HOME": "/nonexistent",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        r = subprocess.run(cmd, env=env, cwd="/", capture_output=True, text=True, timeout=90, check=False)
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        assert "unitfile: applied: " in r.stderr and "socket() families AF_UNIX " in r.stderr, r.stderr
        # The service's log lines go to stdout too (structured text): the answers are the JSON ones.
        return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")], r.stdout + r.stderr


def staged(where: Path) -> dict[str, Path]:
    """What scripts/install gives a gateway for this, staged under `where`: the polkit rule, the bus rule."""
    (where / "etc").mkdir(parents=True)
    (where / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (where / "etc/group").write_text("root:x:0:\n")
    r = subprocess.run([ROOT / "scripts" / "install", "--root", where], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r
    return {
        "polkit": where / "etc/polkit-1/rules.d/50-failoverd.rules",
        "bus": where / "etc/dbus-1/system.d/failoverd-modemmanager.conf",
    }


@pytest.fixture
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    """With the polkit and bus rules scripts/install ships, or those the test's indirect parameter names."""
    shipped: list[str] = getattr(request, "param", ["polkit", "bus"])
    where = Path(tempfile.mkdtemp(prefix="fo-polkit-"))
    where.chmod(0o755)
    procs: list[subprocess.Popen[str]] = []
    try:
        installed = staged(where / "staged")
        bus_dir = where / "run-dbus"
        users = user_database(where, {"failoverd": FAILOVERD, "mallory": OTHER})
        bus_rules = [installed["bus"]] if "bus" in shipped else []
        bus, proc = start_system_bus(bus_dir, users, bus_rules)
        procs.append(proc)
        procs.append(start_polkitd(bus, where, [installed["polkit"]] if "polkit" in shipped else [], users))
        procs.append(launch_mmsim(bus, where, SIMULATED))
        yield World(where, bus_dir, bus)
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(where, ignore_errors=True)


def test_the_daemons_user_confined_may_switch_profiles_and_another_user_may_not(world: World) -> None:
    # Reading the modem is open to every user of the bus; changing it is not.
    answers, _ = world.switch_as(OTHER)
    seen, *refused = answers
    assert seen["modem"] == "idle", seen  # found over the default system bus path, under the unit's sandbox
    assert [a["ok"] for a in refused] == [False, False], refused
    slot, register = (str(a["detail"]) for a in refused)
    assert slot.startswith("SetPrimarySimSlot: org.freedesktop.DBus.Error.AccessDenied"), slot  # the bus: root only
    want = "Register: org.freedesktop.ModemManager1.Error.Core.Unauthorized: PolicyKit authorization failed: not "
    assert register.startswith(f"{want}authorized for '{DEVICE_CONTROL}'"), register  # the bus lets it by: polkit

    answers, said = world.switch_as(FAILOVERD)
    seen, *switched = answers
    assert seen["modem"] == "idle", seen  # still on slot 1, disabled: the other user changed nothing
    assert [(a["profile"], a["ok"]) for a in switched] == [("carrier-b", True), ("carrier-b-manual", True)], said
    assert "registered on 20408, connected with APN internet.b" in str(switched[1]["detail"])


@pytest.mark.parametrize("world", [["bus"]], indirect=True)
def test_without_the_polkit_rule_the_daemons_user_may_not_either(world: World) -> None:
    answers, _ = world.switch_as(FAILOVERD)
    assert [a.get("ok") for a in answers[1:]] == [False, False], answers
    assert all(DEVICE_CONTROL in str(a["detail"]) for a in answers[1:]), answers


@pytest.mark.parametrize("world", [["polkit"]], indirect=True)
def test_without_the_bus_rule_modemmanager_1_20_keeps_the_slot_switch_for_root(world: World) -> None:
    """ModemManager's own bus rules (Debian 12's 1.20) do not list SetPrimarySimSlot: the bus refuses it
    before polkit is asked. Register is listed: polkit's rule alone lets it through."""
    answers, _ = world.switch_as(FAILOVERD)
    slot, register = answers[1:]
    assert not slot["ok"] and "SetPrimarySimSlot: org.freedesktop.DBus.Error.AccessDenied" in str(slot["detail"])
    assert "Core.Unauthorized" not in str(register["detail"]), register  # (the modem is disabled: WrongState)


def pkcheck(world: World, pid: int, action: str, **details: str) -> int:
    """polkitd's answer for process `pid`: 0 yes, 1 no, 2 only with authentication (pkcheck(1))."""
    cmd = ["pkcheck", "--action-id", action, "--process", str(pid)]
    for k, v in details.items():
        cmd += ["--detail", k, v]
    env = {"PATH": os.environ["PATH"], "DBUS_SYSTEM_BUS_ADDRESS": world.bus}
    return subprocess.run(cmd, env=env, capture_output=True, check=False).returncode


def test_the_rule_grants_the_daemons_user_device_control_and_its_standby_units_and_nothing_else(world: World) -> None:
    users = {
        uid: subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "60"])
        for uid in (FAILOVERD, OTHER)
    }
    try:
        fo, other = users[FAILOVERD].pid, users[OTHER].pid
        assert pkcheck(world, fo, DEVICE_CONTROL) == 0
        assert pkcheck(world, other, DEVICE_CONTROL) != 0
        for action in ("Control", "Firmware", "Messaging", "Location", "Voice", "USSD", "Contacts", "Time"):
            assert pkcheck(world, fo, f"org.freedesktop.ModemManager1.{action}") != 0, action
        # The cold-standby part of the same file, with the details systemd passes (unit, verb).
        manage = "org.freedesktop.systemd1.manage-units"
        assert pkcheck(world, fo, manage, unit="failoverd-standby@sat.service", verb="start") == 0
        assert pkcheck(world, fo, manage, unit="failoverd-standby@sat.service", verb="stop") == 0
        assert pkcheck(world, fo, manage, unit="failoverd-standby@sat.service", verb="restart") != 0
        assert pkcheck(world, fo, manage, unit="ssh.service", verb="start") != 0
        assert pkcheck(world, other, manage, unit="failoverd-standby@sat.service", verb="start") != 0
    finally:
        for p in users.values():
            p.kill()
            p.wait()


SANDBOX_PROBE = """
import json, os
def denied(path):
    try:
        os.listdir(path)
    except PermissionError:
        return True
    return False
print(json.dumps({
    "read_only": {p: bool(os.statvfs(p).f_flag & os.ST_RDONLY) for p in ("/", "/etc", "/usr", "/run", "/run/dbus")},
    "run": sorted(os.listdir("/run")),
    "run_dbus": sorted(os.listdir("/run/dbus")),
    "home_hidden": {p: denied(p) for p in ("/root", "/home") if os.path.isdir(p)},
}))
"""


def test_the_sandbox_the_switches_run_in_is_the_units_view(world: World) -> None:
    """unitfile.mount_sandbox as the test above used it: the bus's socket reachable at /run/dbus on a
    read-only mount, as under ProtectSystem=strict, and the homes out of reach (ProtectHome=yes)."""
    cmd = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        *unitfile.mount_sandbox({"dbus": world.bus_dir}),
        *unitfile.setpriv(FAILOVERD, FAILOVERD, []),
        SYSTEM_PYTHON,
        "-c",
        SANDBOX_PROBE,
    ]
    r = subprocess.run(cmd, env={"PATH": os.environ["PATH"]}, cwd="/", capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert all(seen["read_only"].values()), seen
    # the host's /run and its real bus out of sight (mount(8) itself keeps /run/mount/utab)
    assert set(seen["run"]) <= {"dbus", "mount"} and seen["run_dbus"] == ["system_bus_socket"], seen
    assert seen["home_hidden"] and all(seen["home_hidden"].values()), seen
