"""The shipped unit read as systemd reads it, and its confinement reproduced without systemd (setpriv, seccomp)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
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


def seccomp_exec(argv: list[str]) -> None:
    """Load the unit's system-call filter into this process with libseccomp, then exec `argv`.

    Like systemd: what is not allowed fails with SystemCallErrorNumber=, other ABIs than the native one
    are refused (SystemCallArchitectures=native, libseccomp's default), and no_new_privs is set."""
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    scmp_act_errno = 0x00050000 | (error_number() & 0xFFFF)
    scmp_act_allow = 0x7FFF0000
    ctx = lib.seccomp_init(scmp_act_errno)
    assert ctx, "seccomp_init failed"
    for name in sorted(allowed_syscalls()):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # a call of another architecture (the groups name them all), or unknown to libseccomp
            continue
        rc = lib.seccomp_rule_add(ctx, scmp_act_allow, nr, 0)
        assert rc == 0 or rc == -errno.EEXIST, f"seccomp_rule_add({name}): {rc}"
    rc = lib.seccomp_load(ctx)
    assert rc == 0, f"seccomp_load: {rc}"
    if settings("MemoryDenyWriteExecute") == ["yes"]:
        # The kernel's own form of it (Linux 6.3), inherited across fork and exec; systemd 252 uses a
        # seccomp filter on mmap/mprotect with the same effect.
        pr_set_mdwe, pr_mdwe_refuse_exec_gain = 65, 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_mdwe, pr_mdwe_refuse_exec_gain, 0, 0, 0) != 0:
            print(f"unitfile: no PR_SET_MDWE here ({os.strerror(ctypes.get_errno())})", file=sys.stderr)
    os.execvp(argv[0], argv)


if __name__ == "__main__":  # python tests/unitfile.py ARGV...: run ARGV under the unit's filter
    seccomp_exec(sys.argv[1:])
