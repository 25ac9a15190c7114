"""The shipped systemd units: commands the CLI really accepts, a confinement systemd scores at most 2.0."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from failoverd.cli import build_parser

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "failoverd.service"


def _lines(key: str) -> list[str]:
    return [ln.split("=", 1)[1] for ln in UNIT.read_text().splitlines() if ln.startswith(f"{key}=")]


def test_unit_commands_parse() -> None:
    for key in ("ExecStart", "ExecStartPre"):
        (line,) = _lines(key)
        argv = shlex.split(line)
        assert argv[0].endswith("/failoverd")
        args = build_parser().parse_args(argv[1:])
        assert args.command in ("run", "check")


def test_unit_is_a_notify_service_with_a_watchdog() -> None:
    assert _lines("Type") == ["notify"]
    assert _lines("WatchdogSec")
    assert "CAP_NET_ADMIN" in _lines("CapabilityBoundingSet")[0]


def test_unit_runs_as_its_own_user_with_two_capabilities() -> None:
    assert _lines("User") == ["failoverd"] and _lines("NoNewPrivileges") == ["yes"]
    assert set(_lines("CapabilityBoundingSet")[0].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert set(_lines("AmbientCapabilities")[0].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}


# -- confinement: scored and checked by systemd's own tools -----------------------------------------
SYSTEMD = UNIT.parent
needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd not installed")


def _verify(unit: Path, name: str, executables: dict[str, str], tmp_path: Path) -> str:
    """`systemd-analyze verify` of a copy whose commands point at stubs (the real ones are not installed
    here); everything else is the shipped text. Returns what verify said: nothing when the unit is clean."""
    text = unit.read_text()
    for path, stub in executables.items():
        (tmp_path / stub).write_text("#!/bin/sh\n")
        (tmp_path / stub).chmod(0o755)
        text = text.replace(path, str(tmp_path / stub))
    (tmp_path / name).write_text(text)
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=no", str(tmp_path / name)],
        capture_output=True,
        text=True,
        check=False,
    )
    return r.stdout + r.stderr + ("" if r.returncode == 0 else f"exit status {r.returncode}")


@needs_systemd_analyze
def test_unit_scores_at_most_2_0_in_systemd_analyze_security() -> None:
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for failoverd\.service: (\d+\.\d)", r.stdout)
    assert match, r.stdout + r.stderr
    assert float(match[1]) <= 2.0 and r.returncode == 0, r.stdout


@needs_systemd_analyze
def test_units_verify_cleanly(tmp_path: Path) -> None:
    said = _verify(UNIT, "failoverd.service", {"/usr/local/bin/failoverd": "failoverd"}, tmp_path)
    assert said == "", said
    standby = SYSTEMD / "failoverd-standby@.service"
    said = _verify(standby, "failoverd-standby@sat.service", {"/etc/failoverd/standby/%i": "sat"}, tmp_path)
    assert said == "", said


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd not installed")
def test_sysusers_creates_the_units_user_in_the_socket_group(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group"):
        (tmp_path / "etc" / name).write_text("root:x:0:0:root:/root:/bin/sh\n" if name == "passwd" else "root:x:0:\n")
    conf = SYSTEMD / "sysusers.d-failoverd.conf"
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(conf)], capture_output=True, check=True)
    passwd = {ln.split(":")[0]: ln.split(":") for ln in (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {ln.split(":")[0]: ln.split(":") for ln in (tmp_path / "etc/group").read_text().splitlines()}
    (user,) = _lines("User")
    (group,) = _lines("Group")
    assert user in passwd and passwd[user][6] == "/usr/sbin/nologin"
    assert groups[group][2] == passwd[user][3]  # Group= is the user's own group
    assert user in groups["failoverd-ctl"][3].split(",")  # so it may chown its socket to that group
    assert 0 < int(passwd[user][2]) < 1000  # a system user


# As polkitd runs rules: in the order added, the first answer other than NOT_HANDLED wins.
POLKIT_HARNESS = """
const fs = require("fs");
const rules = [];
const polkit = {Result: {YES: "yes", NOT_HANDLED: "not-handled"}, addRule: (f) => { rules.push(f); }};
eval(fs.readFileSync(process.argv[1], "utf8"));
const decide = (action, subject) => {
  for (const rule of rules) {
    const r = rule(action, subject);
    if (r !== undefined && r !== polkit.Result.NOT_HANDLED) return r;
  }
  return polkit.Result.NOT_HANDLED;
};
const out = JSON.parse(process.argv[2]).map(([id, user, unit, verb]) =>
  decide({id, lookup: (k) => ({unit, verb})[k]}, {user}));
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node (to run the polkit rule's JavaScript) not installed")
def test_polkit_lets_failoverd_start_and_stop_only_its_standby_units_and_control_modems() -> None:
    manage, files, NO = (
        "org.freedesktop.systemd1.manage-units",
        "org.freedesktop.systemd1.manage-unit-files",
        "not-handled",
    )
    cases = [
        ((manage, "failoverd", "failoverd-standby@sat.service", "start"), "yes"),
        ((manage, "failoverd", "failoverd-standby@sat-2.service", "stop"), "yes"),
        ((manage, "failoverd", "failoverd-standby@sat.service", "restart"), NO),
        ((manage, "failoverd", "failoverd.service", "stop"), NO),
        ((manage, "failoverd", "sshd.service", "start"), NO),
        ((manage, "failoverd", "failoverd-standby@sat.service.d/../sshd.service", "start"), NO),
        ((manage, "alice", "failoverd-standby@sat.service", "start"), NO),
        ((files, "failoverd", "failoverd-standby@sat.service", "start"), NO),
        # ModemManager: what the modem service calls, for failoverd only (tests/test_modem_polkit.py: polkitd)
        (("org.freedesktop.ModemManager1.Device.Control", "failoverd", None, None), "yes"),
        (("org.freedesktop.ModemManager1.Device.Control", "alice", None, None), NO),
        (("org.freedesktop.ModemManager1.Control", "failoverd", None, None), NO),
        (("org.freedesktop.ModemManager1.Firmware", "failoverd", None, None), NO),
    ]
    rule = SYSTEMD / "polkit" / "50-failoverd.rules"
    r = subprocess.run(
        ["node", "-e", POLKIT_HARNESS, "--", str(rule), json.dumps([c for c, _ in cases])],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(r.stdout) == [want for _, want in cases]


# -- the Debian package's unit: debian/rules renders it from the shipped one ------------------------
def _packaged_unit(tmp_path: Path) -> Path:
    """The unit as debian/rules writes it: its `sed 's|FROM|TO|g'` of the shipped file, applied here."""
    rules = (UNIT.parent.parent / "debian" / "rules").read_text()
    match = re.search(r"sed 's\|([^|]+)\|([^|]+)\|g' systemd/failoverd\.service > debian/failoverd\.service", rules)
    assert match, "debian/rules no longer renders the unit with one sed substitution"
    unit = tmp_path / "failoverd.service"
    unit.write_text(UNIT.read_text().replace(match[1], match[2]))
    return unit


@needs_systemd_analyze
def test_packaged_unit_scores_and_verifies_as_the_shipped_one(tmp_path: Path) -> None:
    unit = _packaged_unit(tmp_path)
    for key in ("ExecStart", "ExecStartPre"):
        (line,) = [ln.split("=", 1)[1] for ln in unit.read_text().splitlines() if ln.startswith(f"{key}=")]
        assert shlex.split(line)[0] == "/usr/sbin/failoverd"  # debian/failoverd.links puts it there
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for failoverd\.service: (\d+\.\d)", r.stdout)
    assert match and float(match[1]) <= 2.0 and r.returncode == 0, r.stdout + r.stderr
    (tmp_path / "verify").mkdir()
    said = _verify(unit, "failoverd.service", {"/usr/sbin/failoverd": "failoverd"}, tmp_path / "verify")
    assert said == "", said
