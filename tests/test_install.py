"""scripts/install into a staging root: the files a gateway gets, their modes, and a second run changing nothing."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="installs root-owned files and a system user"),
    pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd not installed"),
]


def install(root: Path) -> None:
    r = subprocess.run([ROOT / "scripts" / "install", "--root", root], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path's mode, owner, group, and link target or content."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        what = str(p.readlink()) if p.is_symlink() else p.read_text() if p.is_file() else ""
        out[str(p.relative_to(root))] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, what)
    return out


def test_install_stages_the_units_user_and_commands_and_is_idempotent(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\n")
    (tmp_path / "etc/failoverd").mkdir(mode=0o700)  # as the root-run unit's README had it
    (tmp_path / "etc/failoverd/policy.yaml").write_text("site: x\n")
    (tmp_path / "etc/failoverd/policy.yaml").chmod(0o600)
    install(tmp_path)
    files = snapshot(tmp_path)
    groups = [ln.split(":") for ln in (tmp_path / "etc/group").read_text().splitlines()]
    gid = next(int(g[2]) for g in groups if g[0] == "failoverd")

    # the commands point into the venv in /opt, which the unit's user may read and ProtectHome= leaves
    for cmd in ("failoverd", "failoverctl"):
        assert files[f"usr/local/bin/{cmd}"][3] == f"/opt/failoverd/bin/{cmd}"
    shipped = {
        "etc/systemd/system/failoverd.service": "failoverd.service",
        "etc/systemd/system/failoverd-standby@.service": "failoverd-standby@.service",
        "etc/polkit-1/rules.d/50-failoverd.rules": "polkit/50-failoverd.rules",
        "etc/dbus-1/system.d/failoverd-modemmanager.conf": "dbus/failoverd-modemmanager.conf",
        "etc/iproute2/rt_protos.d/failoverd.conf": "rt_protos.d-failoverd.conf",
        "usr/lib/sysusers.d/failoverd.conf": "sysusers.d-failoverd.conf",
    }
    for dest, source in shipped.items():
        assert files[dest] == (0o644, 0, 0, (ROOT / "systemd" / source).read_text()), dest
    assert files["etc/failoverd"][:3] == (0o750, 0, gid)  # the old 700 opened to the daemon's group
    assert files["etc/failoverd/policy.yaml"][:3] == (0o600, 0, 0)  # the operator's files are not touched
    passwd = (tmp_path / "etc/passwd").read_text()
    assert "\nfailoverd:x:" in passwd and ":/usr/sbin/nologin" in passwd

    install(tmp_path)
    again = snapshot(tmp_path)
    assert {k: v for k, v in again.items() if not k.endswith("-")} == {
        k: v for k, v in files.items() if not k.endswith("-")
    }  # (sysusers' own backups, passwd- and group-, aside)
