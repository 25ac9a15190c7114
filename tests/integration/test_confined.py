"""failoverd confined as systemd/failoverd.service confines it (user, capabilities, syscall filter), in a real lab.

Reproduced from the shipped unit, read as systemd reads it (tests/unitfile.py): User= (by a stand-in,
below), CapabilityBoundingSet=/AmbientCapabilities=, NoNewPrivileges=, SystemCallFilter= with
SystemCallErrorNumber= and SystemCallArchitectures=native, RestrictAddressFamilies= (socket() of
another family fails with EAFNOSUPPORT), ProtectProc= (a /proc mounted with hidepid), and
MemoryDenyWriteExecute= through the kernel's PR_SET_MDWE, on Linux 6.3 and later only: on an older
kernel the daemon runs without it, its log says so, and the test of it is skipped with the reason.

Not reproduced: the mount sandbox (ProtectSystem=, ProtectHome=, PrivateTmp=, PrivateDevices=,
PrivateMounts=, ProtectKernelTunables=/Modules=/Logs=, ProtectControlGroups=), which takes files
away rather than calls; ProtectClock= and ProtectHostname= beyond what the syscall filter refuses;
RestrictNamespaces=, RestrictRealtime=, RestrictSUIDSGID=, LockPersonality=, KeyringMode=, RemoveIPC=,
UMask=, MemoryMax=, and the watchdog. tests/test_systemd_unit.py checks those with systemd-analyze.
"""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import unitfile
from netlab import ROOT, GatewayLab, wait_answering

# The unit's User= does not exist on a test machine, so an unprivileged stand-in runs the daemon:
# nobody, with a supplementary group for the socket (users, as failoverd is in failoverd-ctl). What
# it may do beyond any user comes from the shipped unit: capabilities, no_new_privs, the system-call
# filter, the address families, MemoryDenyWriteExecute (where the kernel has it) and ProtectProc.
DAEMON_UID, DAEMON_GID = 65534, 65534
SOCKET_GROUP = "users"
MEMBER_UID, STRANGER_UID = 64000, 64001  # clients: one in the socket's group, one not
SYSTEM_PYTHON = "/usr/bin/python3"  # the venv's interpreter lives where these users may not read


@pytest.fixture
def confined_lab() -> Iterator[GatewayLab]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates fo-* network namespaces and switches users")
    version = [SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"]
    if subprocess.run(version, capture_output=True, text=True, check=False).stdout.strip() != str(sys.version_info[:2]):
        pytest.skip(f"{SYSTEM_PYTHON} is not the venv's Python version: it cannot load the venv's packages")
    where = Path(tempfile.mkdtemp(prefix="fo-confined-"))
    os.chown(where, DAEMON_UID, DAEMON_GID)
    where.chmod(0o755)  # the daemon writes its state and socket here; clients reach the socket
    try:
        lab = GatewayLab(where)
        lab.policy_path.write_text(
            lab.policy_path.read_text().replace(
                "control:\n", f"control:\n  socket_group: {SOCKET_GROUP}\n  socket_mode: '0660'\n"
            )
        )
        lab.policy_path.chmod(0o644)
        lab.build()
        try:
            yield lab
        finally:
            lab.destroy()
    finally:
        shutil.rmtree(where, ignore_errors=True)


def env() -> dict[str, str]:
    site = sysconfig.get_paths()["purelib"]  # the venv's packages, read by Debian's python of the same version
    return {"PATH": os.environ["PATH"], "PYTHONPATH": f"{ROOT}:{site}", "HOME": "/nonexistent"}


def start_confined(lab: GatewayLab) -> subprocess.Popen[bytes]:
    # `ip netns exec` instead of --netns: setns() needs CAP_SYS_ADMIN, which the unit does not grant.
    # It also makes a mount namespace, where the daemon gets the unit's /proc. Each step execs the
    # next, so the pid is the daemon's.
    cmd = [
        "ip",
        "netns",
        "exec",
        lab.topo.ns("gw"),
        *unitfile.proc_mount(),
        *unitfile.setpriv(DAEMON_UID, DAEMON_GID, [grp.getgrnam(SOCKET_GROUP).gr_gid]),
        SYSTEM_PYTHON,
        str(ROOT / "tests" / "unitfile.py"),
        *([] if unitfile.mdwe_supported() else ["--no-mdwe"]),
        SYSTEM_PYTHON,
        "-m",
        "failoverd.cli",
        "run",
        "--policy",
        str(lab.policy_path),
        "--state-dir",
        str(lab.state_dir),
        "--socket",
        lab.socket,
        "--log-json",
    ]
    lab.daemon = subprocess.Popen(
        cmd, stdout=lab.log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT, env=env(), start_new_session=True
    )
    lab.topo.procs.append(lab.daemon)
    wait_answering(lab.daemon, lab.socket, lab.log, "confined failoverd")
    return lab.daemon


def ctl_as(uid: int, groups: list[int], lab: GatewayLab, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [SYSTEM_PYTHON, "-m", "failoverd.ctl", "--socket", lab.socket, *args]
    return subprocess.run(
        cmd, user=uid, group=uid, extra_groups=groups, env=env(), cwd=ROOT, capture_output=True, text=True, check=False
    )


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def test_the_confined_daemon_fails_over_answers_its_group_and_activates_a_cold_standby(
    confined_lab: GatewayLab,
) -> None:
    lab = confined_lab
    daemon = start_confined(lab)
    users = grp.getgrnam(SOCKET_GROUP).gr_gid
    # It really is confined as the unit says: its own user, two capabilities, no way up, a filter.
    st = proc_status(daemon.pid)
    assert st["Uid"].split()[0] == str(DAEMON_UID), st
    assert int(st["CapEff"], 16) == int(st["CapBnd"], 16) == (1 << 12) | (1 << 13), st  # NET_ADMIN, NET_RAW
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2", st
    # What the filter holds, as unitfile.py said before it exec'd the daemon (MDWE cannot be read back).
    (applied,) = [ln for ln in lab.log.read_text().splitlines() if ln.startswith("unitfile: applied: ")]
    print(applied)
    assert "socket() families AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET" in applied, applied
    mdwe = "; MemoryDenyWriteExecute (PR_SET_MDWE)" if unitfile.mdwe_supported() else "; NOT MemoryDenyWriteExecute"
    assert mdwe in applied, applied
    mounts = Path(f"/proc/{daemon.pid}/mounts").read_text().splitlines()
    assert any(m.startswith("proc /proc ") and "hidepid=invisible" in m for m in mounts), mounts
    lab.wait_class("critical", "fiber")

    # The socket belongs to the policy's group without CAP_CHOWN; members may act, others not even connect.
    sock = Path(lab.socket).stat()
    assert (sock.st_gid, stat.S_IMODE(sock.st_mode)) == (users, 0o660)
    r = ctl_as(STRANGER_UID, [], lab, "status")
    assert r.returncode == 3 and "not allowed to use" in r.stderr, r
    r = ctl_as(MEMBER_UID, [users], lab, "drain", "fiber", "--reason", "splice repair")
    assert r.returncode == 0, r
    lab.wait_class("bulk", "mobile", timeout=5)
    (override,) = lab.ctl("status")["overrides"]
    assert override["by"].startswith(f"local:uid{MEMBER_UID}"), override
    # The history names the same peer, whatever the client said of itself.
    (drain,) = [r for r in lab.ctl("history", "--last", "200")["records"] if r["kind"] == "command"]
    assert "drain fiber" in drain["text"] and drain["by"].startswith(f"local:uid{MEMBER_UID}/"), drain
    r = ctl_as(MEMBER_UID, [users], lab, "release", "--all")
    assert r.returncode == 0, r
    lab.wait_class("bulk", "fiber", timeout=5)

    # A fiber cut (routes, rules, conntrack flush), then the mobile path dead too: the cold satellite's
    # activate command (ip link set up) runs with the daemon's capabilities and nothing more.
    lab.carrier(False)
    lab.wait_class("critical", "mobile", timeout=5)
    lab.blackhole(True, "isp2")
    lab.wait_class("critical", "sat", timeout=10)
    assert "state UP" in lab.topo.sh("gw", "ip", "link", "show", "dev", "sat0").stdout

    # The filter is the unit's: even the read-only adjtimex(2) is refused (ProtectClock=yes), so the
    # clock checker goes without the kernel's flag, as README says.
    assert lab.clock()["kernel"] is None
    log = lab.log.read_text()
    assert "Traceback" not in log and "control-permissions" not in log, log[-3000:]


# -- the filter itself: what it refuses that the lab run above only shows the daemon lives without ----
PROBE = """
import errno, mmap, socket, sys
for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, socket.AF_PACKET):
    try:
        socket.socket(family, socket.SOCK_DGRAM).close()
    except OSError as exc:
        assert exc.errno != errno.EAFNOSUPPORT, (family, exc)  # EPERM for AF_PACKET without CAP_NET_RAW
# Families the unit does not list, each as the first socket type this kernel offers for it
for name in ("AF_ALG", "AF_VSOCK", "AF_KEY", "AF_BLUETOOTH", "AF_TIPC", "AF_CAN"):
    errors = []
    for kind in (socket.SOCK_SEQPACKET, socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW):
        try:
            socket.socket(getattr(socket, name), kind).close()
            errors = ["allowed"]
            break
        except OSError as exc:
            errors.append(errno.errorcode[exc.errno])
    print(name, errors[-1])
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()
    print("W+X allowed")
except OSError as exc:
    print("W+X", errno.errorcode[exc.errno])
"""


def probe(*unitfile_args: str) -> list[str]:
    argv = [SYSTEM_PYTHON, "-c", PROBE]
    if unitfile_args != ("none",):
        argv = [SYSTEM_PYTHON, str(ROOT / "tests" / "unitfile.py"), *unitfile_args, *argv]
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r
    return r.stdout.splitlines()


def test_the_filter_refuses_socket_families_the_unit_does_not_list() -> None:
    assert not {"AF_ALG", "AF_VSOCK", "AF_KEY", "AF_BLUETOOTH", "AF_TIPC", "AF_CAN"} & set(unitfile.address_families())
    open_here = [ln.split()[0] for ln in probe("none") if ln.startswith("AF_") and ln.endswith(" allowed")]
    if not open_here:
        pytest.skip("this kernel offers none of the probed families beyond the unit's, even without a filter")
    confined = probe()
    assert all(f"{name} EAFNOSUPPORT" in confined for name in open_here), (open_here, confined)


def test_the_filter_refuses_memory_both_writable_and_executable() -> None:
    if not unitfile.mdwe_supported():
        pytest.skip(f"MemoryDenyWriteExecute is not reproduced: Linux {os.uname().release} has no PR_SET_MDWE (6.3)")
    assert "W+X allowed" in probe("none")
    assert "W+X EACCES" in probe()
    assert "W+X allowed" in probe("--no-mdwe")  # and the switch that turns it off really does
