"""A private system-like D-Bus and the ModemManager simulator on it, for the tests that need them."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab.mmsim import own_bus

ROOT = Path(__file__).resolve().parent.parent


def stop(proc: subprocess.Popen[str]) -> None:
    """End one of our processes by its PID; SIGKILL if it does not go in time."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def start_bus(where: Path) -> tuple[str, subprocess.Popen[str]]:
    """A dbus-daemon with its own config under `where`: its address and process (the caller stops it)."""
    return own_bus(where)


def launch_mmsim(bus: str, where: Path, config: dict[str, Any]) -> subprocess.Popen[str]:
    """Start the simulator and wait until it owns ModemManager's name (the caller stops it)."""
    path = where / "mmsim.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.mmsim", "--bus", bus, "--config", str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("mmsim: "), "the simulator did not come up"
    except BaseException:
        stop(proc)
        raise
    return proc


# -- a bus with the system bus's rules, and polkitd on it ---------------------------------------------

SYSTEM_BUS_RULES = ("/usr/share/dbus-1/system.d", "/etc/dbus-1/system.d")


def system_bus_config(socket_path: Path, rules: list[Path]) -> str:
    """A dbus-daemon config with the system bus's default policy (as Debian's system.conf: no name may be
    owned and no method called unless a rule allows it), the rules the installed packages put in
    system.d (ModemManager's: who may call which method, who may own its name; polkitd's), and `rules`."""
    includes = "\n".join(
        [f"  <includedir>{d}</includedir>" for d in SYSTEM_BUS_RULES] + [f"  <include>{f}</include>" for f in rules]
    )
    return f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket_path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
{includes}
</busconfig>
"""


def user_database(where: Path, users: dict[str, int]) -> dict[str, Path]:
    """Copies of /etc/passwd and /etc/group with `users` added (each with a group of its own), to be bound
    over the machine's in a mount namespace (private_mounts): the machine's user database is not touched."""
    passwd, group = Path("/etc/passwd").read_text(), Path("/etc/group").read_text()
    for name, uid in users.items():
        passwd += f"{name}:x:{uid}:{uid}:{name}:/nonexistent:/usr/sbin/nologin\n"
        group += f"{name}:x:{uid}:\n"
    out = {"/etc/passwd": where / "passwd", "/etc/group": where / "group"}
    out["/etc/passwd"].write_text(passwd)
    out["/etc/group"].write_text(group)
    for f in out.values():
        f.chmod(0o644)
    return out


def private_mounts(binds: dict[str, Path]) -> list[str]:
    """An argv prefix: the command in a mount namespace of its own, with each source bound over its target."""
    mounts = "".join(f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)} && " for dst, src in binds.items())
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mounts}exec "$@"', "mounts"]


def start_system_bus(socket_dir: Path, users: dict[str, Path], rules: list[Path]) -> tuple[str, subprocess.Popen[str]]:
    """A bus with the system bus's rules and `rules`, its socket at socket_dir/system_bus_socket (as
    /run/dbus has it). dbus-daemon refuses a connection from a user it cannot look up, and ignores a
    policy for one: `users` (user_database) are its."""
    socket_dir.mkdir(mode=0o755, exist_ok=True)
    return own_bus(
        socket_dir,
        private_mounts(users),
        socket="system_bus_socket",
        config=lambda path: system_bus_config(path, rules),
        conf=socket_dir.parent / "system-bus.conf",  # not beside the socket: that directory is the unit's /run/dbus
    )


POLKITD = "/usr/lib/polkit-1/polkitd"


def start_polkitd(bus: str, where: Path, rules: list[Path], users: dict[str, Path]) -> subprocess.Popen[str]:
    """The real polkitd on `bus`, with `rules` as the only files of /etc/polkit-1/rules.d (the packages'
    own in /usr/share/polkit-1/rules.d stay) and `users` (user_database) as its user database, both in
    a mount namespace of its own: the machine's rules, users and system bus are not touched. It
    switches to its user, polkitd, itself. The caller stops it."""
    rules_dir = where / "polkit-rules.d"
    rules_dir.mkdir(mode=0o755)
    for rule in rules:
        (rules_dir / rule.name).write_text(rule.read_text())
        (rules_dir / rule.name).chmod(0o644)
    log = where / "polkitd.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*private_mounts({"/etc/polkit-1/rules.d": rules_dir, **users}), POLKITD],
            env={"PATH": os.environ["PATH"], "DBUS_SYSTEM_BUS_ADDRESS": bus},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    deadline = time.monotonic() + 10
    # It says when it owns its name on the bus; its rules are loaded before that.
    while "Acquired the name org.freedesktop.PolicyKit1" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(f"polkitd did not come up: {log.read_text()}")
        time.sleep(0.05)
    return proc
