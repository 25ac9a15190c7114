"""The shipped unit read as systemd reads it, and its confinement reproduced without systemd (setpriv, seccomp)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "failoverd.service"
# What systemd lets through any allow list (systemd.exec(5), SystemCallFilter=): starting the binary,
# exiting, signal return, and reading time and sleeping.
IMPLICIT = [
    "execve",
    "exit",
    "exit_group",
    "getrlimit",
    "rt_sigreturn",
    "sigreturn",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "gettimeofday",
    "nanosleep",
    "time",
]


def settings(key: str, unit: Path = UNIT) -> list[str]:
    """Every value of `key`, in order (a key given twice is two entries, as systemd merges them)."""
    return [ln.split("=", 1)[1].strip() for ln in unit.read_text().splitlines() if ln.startswith(f"{key}=")]


def words(key: str, unit: Path = UNIT) -> list[str]:
    return [w for value in settings(key, unit) for w in value.split()]


def capabilities(unit: Path = UNIT) -> list[str]:
    """The ambient capabilities in setpriv's spelling (net_admin), checked to lie within the bounding set."""
    ambient, bounding = set(words("AmbientCapabilities", unit)), set(words("CapabilityBoundingSet", unit))
    assert ambient <= bounding, f"ambient {ambient} outside the bounding set {bounding}"
    return sorted(c.removeprefix("CAP_").lower() for c in bounding)


def setpriv(uid: int, gid: int, groups: list[int], unit: Path = UNIT) -> list[str]:
    """setpriv's argv prefix that runs a command as the unit would run ExecStart (user, capabilities, NNP)."""
    assert settings("NoNewPrivileges", unit) == ["yes"]
    caps = ",".join(f"+{c}" for c in capabilities(unit))
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
        f"--inh-caps=-all,{caps}",
        f"--ambient-caps=-all,{caps}",
        f"--bounding-set=-all,{caps}",
        "--no-new-privs",
        "--",
    ]


def proc_mount(unit: Path = UNIT) -> list[str]:
    """An argv prefix that gives the command a /proc of its own as ProtectProc= does (other users'
    processes invisible); to run inside a private mount namespace (`ip netns exec` makes one)."""
    (mode,) = settings("ProtectProc", unit)
    assert settings("ProcSubset", unit) in ([], ["all"]), "ProcSubset= is not reproduced here"
    return ["sh", "-c", f'mount -t proc -o hidepid={mode} proc /proc && exec "$@"', "proc"]


def mount_sandbox(run: dict[str, Path], unit: Path = UNIT) -> list[str]:
    """An argv prefix, to run as root in a private mount namespace (`unshare --mount`), that gives the
    command the unit's view of the file system: a /run of its own holding only `run` (a name under /run:
    a directory bound there, e.g. "dbus" for a private bus's socket, as the host's /run/dbus), then
    ProtectSystem=strict (every mount read-only, /dev, /proc and /sys aside), ProtectHome=yes (/home,
    /root empty and inaccessible) and ProtectProc= (a /proc with hidepid)."""
    assert settings("ProtectSystem", unit) == ["strict"] and settings("ProtectHome", unit) == ["yes"]
    (hidepid,) = settings("ProtectProc", unit)
    steps = [
        "set -e",
        # ProtectSystem=strict: systemd binds the whole tree read-only; here each mount is made so.
        "for m in $(awk '{print $5}' /proc/self/mountinfo); do",
        '  case "$m" in /dev|/dev/*|/proc|/proc/*|/sys|/sys/*) continue;; esac',
        '  mount -o remount,bind,ro "$m"',
        "done",
        "mount -t tmpfs -o mode=755 tmpfs /run",
    ]
    for name, source in run.items():
        where = f"/run/{shlex.quote(name)}"
        steps += [f"mkdir {where}", f"mount --bind {shlex.quote(str(source))} {where}"]
        steps += [f"mount -o remount,bind,ro {where}"]
    steps += [
        "mount -o remount,ro /run",
        # ProtectHome=yes (the host's /run/user is already out of sight: this /run is a new one)
        "for d in /home /root; do if [ -d $d ]; then mount -t tmpfs -o ro,mode=000 tmpfs $d; fi; done",
        f"mount -t proc -o hidepid={hidepid} proc /proc",
        'exec "$@"',
    ]
    return ["sh", "-c", "\n".join(steps), "sandbox"]


def _group(name: str) -> set[str]:
    """A syscall group (@name) resolved by systemd itself, nested groups included."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        calls |= _group(word) if word.startswith("@") else {word}
    return calls


def allowed_syscalls(unit: Path = UNIT) -> set[str]:
    """The unit's SystemCallFilter= allow list, merged in order as systemd.exec(5) says."""
    allowed: set[str] = set()
    for i, value in enumerate(settings("SystemCallFilter", unit)):
        deny = value.startswith("~")
        assert i > 0 or not deny, "the unit's first SystemCallFilter= must be an allow list"
        names = set()
        for word in value.removeprefix("~").split():
            names |= _group(word) if word.startswith("@") else {word}
        allowed = allowed - names if deny else allowed | names
    return allowed | set(IMPLICIT)


def error_number(unit: Path = UNIT) -> int:
    (name,) = settings("SystemCallErrorNumber", unit)
    return int(getattr(errno, name))


def address_families(unit: Path = UNIT) -> dict[str, int]:
    """RestrictAddressFamilies=, an allow list, as numbers (AF_UNIX: 1...)."""
    names = words("RestrictAddressFamilies", unit)
    assert names and not names[0].startswith("~"), "only an allow list of families is reproduced"
    return {name: int(getattr(socket, name)) for name in names}


# prctl(2): the kernel's own MemoryDenyWriteExecute (Linux 6.3); older kernels answer EINVAL.
PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1


def mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0)


class _ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


SCMP_CMP_GT, SCMP_CMP_MASKED_EQ = 6, 7
SCMP_ACT_ALLOW = 0x7FFF0000


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def seccomp_exec(argv: list[str], mdwe: bool = True) -> None:
    """Load the unit's system-call filter into this process with libseccomp, then exec `argv`.

    Like systemd: what is not allowed fails with SystemCallErrorNumber=; socket() of a family outside
    RestrictAddressFamilies= fails with EAFNOSUPPORT (socketpair() is not filtered, as in systemd);
    other ABIs than the native one are refused (SystemCallArchitectures=native, libseccomp's default);
    no_new_privs is set. MemoryDenyWriteExecute= is the kernel's PR_SET_MDWE (systemd 252 filters
    mmap/mprotect instead, to the same effect); where the unit asks for it and `mdwe` is true, a kernel
    without it is an error, never a silent pass. What was applied is said on stderr, one line."""
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(scmp_act_errno(error_number()))
    assert ctx, "seccomp_init failed"
    allowed = allowed_syscalls()
    for name in sorted(allowed - {"socket"}):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # a call of another architecture (the groups name them all), or unknown to libseccomp
            continue
        rc = lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0)
        assert rc == 0 or rc == -errno.EEXIST, f"seccomp_rule_add({name}): {rc}"
    families = address_families()
    if "socket" in allowed:
        # Per family, as systemd does: the listed ones allowed, every other one EAFNOSUPPORT (the
        # family is an int: only its low 32 bits are compared; above 63 is no family Linux has).
        nr = lib.seccomp_syscall_resolve_name(b"socket")
        for family in range(64):
            action = SCMP_ACT_ALLOW if family in families.values() else scmp_act_errno(errno.EAFNOSUPPORT)
            cmp = _ArgCmp(0, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, family)
            assert lib.seccomp_rule_add_array(ctx, action, nr, 1, ctypes.byref(cmp)) == 0, family
        cmp = _ArgCmp(0, SCMP_CMP_GT, 63, 0)
        assert lib.seccomp_rule_add_array(ctx, scmp_act_errno(errno.EAFNOSUPPORT), nr, 1, ctypes.byref(cmp)) == 0
    rc = lib.seccomp_load(ctx)
    assert rc == 0, f"seccomp_load: {rc}"
    applied = [f"{len(allowed)} system calls (SystemCallFilter=)", f"socket() families {' '.join(families)}"]
    if settings("MemoryDenyWriteExecute") == ["yes"]:
        if mdwe:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
                sys.exit(f"unitfile: MemoryDenyWriteExecute=yes: no PR_SET_MDWE on Linux {platform.release()}")
            applied.append("MemoryDenyWriteExecute (PR_SET_MDWE)")
        else:
            applied.append(f"NOT MemoryDenyWriteExecute (left out on request, Linux {platform.release()})")
    print(f"unitfile: applied: {'; '.join(applied)}", file=sys.stderr, flush=True)
    os.execvp(argv[0], argv)


if __name__ == "__main__":  # python tests/unitfile.py [--no-mdwe] ARGV...: run ARGV under the unit's filter
    if sys.argv[1] == "--no-mdwe":
        seccomp_exec(sys.argv[2:], mdwe=False)
    else:
        seccomp_exec(sys.argv[1:])
