"""The Debian package on this machine: built, installed, run for a fiber cut, upgraded under load, removed, purged."""

# One test, since each step starts from what the one before left: `make deb`'s package (scripts/deb,
# lintian included) is installed with apt, the INSTALLED failoverd checks the example policy and
# runs the lab's gateway (tests/netlab.py) from /etc/failoverd/policy.yaml through a fiber cut and an
# operator's override; a package rebuilt with a higher version (built meanwhile, in the background,
# without network) is installed while that daemon runs; the daemon is restarted as the package's postinst would have
# systemd restart it, and the override and the state are still there; `apt-get remove` keeps the
# conffiles and the operator's files, `apt-get purge` removes them, and no path of the package nor
# any other path named failoverd is left, but the system user and its groups (Debian keeps those).
#
# It changes this machine (a package, a system user), so it runs only as root, and not where a
# failoverd is installed already (an operator's, or the scripts/install one, which shares /opt/failoverd).

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netlab import ROOT, GatewayLab, wait_answering

from lab.netns import wait_for

ARCH = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=False).stdout.strip()
UPGRADE = "+upgrade1"  # appended to the changelog's version for the rebuilt package
SCANNED = ("/etc", "/opt", "/usr", "/var")  # where a package's files go; /var/tmp and /var/log are not its
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: installs a package, creates namespaces"),
    pytest.mark.skipif(
        shutil.which("dh_virtualenv") is None or shutil.which("lintian") is None,
        reason="dh-virtualenv and lintian not installed (make bootstrap)",
    ),
]


def run(*argv: str, timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=APT_ENV, **kw)
    assert r.returncode == 0, f"{' '.join(argv)}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def installed_version() -> str | None:
    r = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Status} ${Version}", "failoverd"], capture_output=True, text=True, check=False
    )
    status = r.stdout.split()
    return status[3] if r.returncode == 0 and status[:3] == ["install", "ok", "installed"] else None


def known_to_dpkg() -> bool:
    return subprocess.run(["dpkg", "-s", "failoverd"], capture_output=True, check=False).returncode == 0


def paths() -> set[str]:
    found: set[str] = set()
    for top in SCANNED:
        for d, dirs, files in os.walk(top):
            if d in ("/var/tmp", "/var/log"):
                dirs[:] = []
                continue
            found.update(f"{d}/{n}" for n in (*dirs, *files))
    return found


def ctl(socket: str, *args: str) -> dict[str, Any]:
    """The INSTALLED failoverctl's JSON reply."""
    r = subprocess.run(
        ["/usr/bin/failoverctl", "--socket", socket, "--json", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert r.returncode in (0, 1), r.stderr
    reply: dict[str, Any] = json.loads(r.stdout)
    return reply


def where(socket: str, name: str) -> str | None:
    c = next(c for c in ctl(socket, "status")["classes"] if c["name"] == name)
    return str(c["uplink"]) if c["route"] == "via" else str(c["route"])


@pytest.fixture
def machine() -> Iterator[set[str]]:
    """The paths on this machine before the package; purges it afterwards, pass or fail."""
    if known_to_dpkg() or Path("/opt/failoverd").exists():
        pytest.skip("a failoverd is installed on this machine already: not touching it")
    before = paths()
    try:
        yield before
    finally:
        if known_to_dpkg():
            subprocess.run(["apt-get", "purge", "-y", "-q", "failoverd"], capture_output=True, env=APT_ENV, check=False)


@pytest.fixture
def builds() -> Iterator[list[subprocess.Popen[str]]]:
    """The package builds a test starts; one still running at the end (the test failed) is ended."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # its own session: dpkg-buildpackage and all under it
            p.wait()


def build(out: Path, *args: str, offline: bool = False) -> subprocess.Popen[str]:
    """scripts/deb into `out`; offline: in a network namespace of its own with no link but a down
    loopback, so the build shows it needs nothing from the network once the wheelhouse is filled."""
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [*(["unshare", "--net"] if offline else []), str(ROOT / "scripts" / "deb"), *args],
        cwd=ROOT,
        env={**os.environ, "OUT": str(out)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def built(p: subprocess.Popen[str], timeout: float = 600) -> Path:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-4000:]
    return Path(out.strip().splitlines()[-1])


def start(lab: GatewayLab) -> subprocess.Popen[bytes]:
    """The installed daemon, as the unit's ExecStart= runs it (as root here: tests/integration/test_confined.py
    confines it), in the lab's gateway namespace."""
    cmd = ["/usr/sbin/failoverd", "run", "--policy", "/etc/failoverd/policy.yaml", "--state-dir", "/var/lib/failoverd"]
    cmd += ["--socket", lab.socket, "--netns", lab.topo.ns("gw"), "--log-json"]
    lab.daemon = subprocess.Popen(cmd, stdout=lab.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    lab.topo.procs.append(lab.daemon)
    wait_answering(lab.daemon, lab.socket, lab.log, "installed failoverd")
    return lab.daemon


def test_package_installs_runs_upgrades_and_purges(
    machine: set[str], builds: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    took: dict[str, float] = {}
    t0 = time.monotonic()
    base_dir, upgrade_dir = ROOT / "build" / "deb-test" / "base", ROOT / "build" / "deb-test" / "upgrade"
    builds.append(build(base_dir))
    deb = built(builds[-1])  # linted: scripts/deb fails on a lintian warning
    took["build+lintian"] = time.monotonic() - t0
    version = deb.name.split("_")[1]
    assert deb.name == f"failoverd_{version}_{ARCH}.deb"
    # The upgrade builds while the first package is tried, with no network (the wheelhouse is full by now).
    upgrade_build = build(upgrade_dir, "--version", version + UPGRADE, "--no-lintian", offline=True)
    builds.append(upgrade_build)

    t = time.monotonic()
    run("apt-get", "install", "-y", "-q", f"./{deb.name}", cwd=deb.parent)
    took["install"] = time.monotonic() - t
    assert installed_version() == version
    files = run("dpkg", "-L", "failoverd").stdout.split()
    for path in (
        "/usr/sbin/failoverd",
        "/usr/bin/failoverctl",
        "/lib/systemd/system/failoverd.service",
        "/usr/lib/sysusers.d/failoverd.conf",
        "/usr/lib/tmpfiles.d/failoverd.conf",
        "/etc/iproute2/rt_protos.d/failoverd.conf",
        "/usr/share/polkit-1/rules.d/50-failoverd.rules",
        "/usr/share/dbus-1/system.d/failoverd-modemmanager.conf",
        "/usr/share/failoverd/mosquitto/failoverd.acl",
        "/usr/share/man/man8/failoverd.8.gz",
        "/usr/share/man/man8/failoverctl.8.gz",
        "/usr/share/man/man5/failoverd-policy.5.gz",
    ):
        assert path in files, path
    conffiles = run("dpkg-query", "-W", "-f", "${Conffiles}", "failoverd").stdout
    assert "/etc/failoverd/example.yaml" in conffiles and "/etc/iproute2/rt_protos.d/failoverd.conf" in conffiles
    # The user, the state dir and the policy's directory, as postinst makes them.
    assert run("id", "-nG", "failoverd").stdout.split() == ["failoverd", "failoverd-ctl"]
    assert Path("/var/lib/failoverd").stat().st_uid == int(run("id", "-u", "failoverd").stdout)
    etc = Path("/etc/failoverd").stat()
    assert etc.st_mode & 0o777 == 0o750 and etc.st_uid == 0
    # The installed command checks the example, as root and as the unit's user (who must read the venv).
    r = run("/usr/sbin/failoverd", "check", "/etc/failoverd/example.yaml")
    assert "example.yaml: OK" in r.stdout
    run("runuser", "-u", "failoverd", "--", "/usr/sbin/failoverd", "check", "--quiet", "/etc/failoverd/example.yaml")
    # The packaged unit is the shipped one with the package's paths, and scores as it does (≤ 2.0).
    unit = Path("/lib/systemd/system/failoverd.service").read_text()
    shipped = (ROOT / "systemd" / "failoverd.service").read_text()
    assert unit == shipped.replace("/usr/local/bin/failoverd", "/usr/sbin/failoverd")
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", "/lib/systemd/system/failoverd.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0 and "Overall exposure level for failoverd.service: 1." in r.stdout, r.stdout + r.stderr
    r = run("systemd-analyze", "verify", "--man=no", "--generators=no", "/lib/systemd/system/failoverd.service")
    assert r.stdout + r.stderr == ""

    # The lab's gateway under the installed daemon, its policy the operator's /etc/failoverd/policy.yaml.
    lab = GatewayLab(tmp_path)
    policy = Path("/etc/failoverd/policy.yaml")
    try:
        lab.build()
        policy.write_text(lab.policy_path.read_text())
        shutil.chown(policy, "root", "failoverd")
        policy.chmod(0o640)
        example = Path("/etc/failoverd/example.yaml")
        example.write_text(example.read_text() + "# the operator's own note\n")  # an edited conffile
        t = time.monotonic()
        start(lab)
        wait_for(lambda: where(lab.socket, "critical") == "fiber", 10, what="critical on fiber")
        lab.carrier(False)
        wait_for(lambda: where(lab.socket, "critical") == "mobile", 5, what="critical on mobile after the cut")
        lab.carrier(True)
        wait_for(lambda: where(lab.socket, "critical") == "fiber", 15, what="critical back on fiber")
        reply = ctl(lab.socket, "failover", "bulk", "--to", "mobile", "--for", "30m", "--reason", "deb upgrade")
        assert reply["ok"], reply
        took["fiber cut"] = time.monotonic() - t

        # The upgrade, while the daemon runs.
        t = time.monotonic()
        upgrade = built(upgrade_build)
        took["upgrade build (background, waited)"] = time.monotonic() - t
        t = time.monotonic()
        run(
            "apt-get",
            "install",
            "-y",
            "-q",
            "-o",
            "Dpkg::Options::=--force-confold",
            f"./{upgrade.name}",
            cwd=upgrade.parent,
        )
        took["upgrade"] = time.monotonic() - t
        assert installed_version() == version + UPGRADE
        assert lab.daemon is not None and lab.daemon.poll() is None, "the upgrade stopped the daemon"
        assert where(lab.socket, "bulk") == "mobile"
        assert example.read_text().endswith("# the operator's own note\n")
        assert policy.read_text() == lab.policy_path.read_text()
        # Restarted as postinst has systemd do (try-restart): the new code, the same state.
        assert lab.topo.stop(lab.daemon) == 0
        start(lab)
        status = ctl(lab.socket, "status")
        assert [(o["id"], o["class"]) for o in status["overrides"]] == [("o1", "bulk")], status["overrides"]
        assert where(lab.socket, "bulk") == "mobile" and where(lab.socket, "critical") == "fiber"
        cuts = [r for r in ctl(lab.socket, "history", "--last", "500")["records"] if r.get("kind") == "decision"]
        assert any(d["class"] == "critical" and d["uplink"] == "mobile" for d in cuts), "history lost"
        assert lab.topo.stop(lab.daemon) == 0
    finally:
        lab.destroy()

    # Remove: the code goes, the conffiles and the operator's files and state stay.
    t = time.monotonic()
    run("apt-get", "remove", "-y", "-q", "failoverd")
    assert installed_version() is None and known_to_dpkg()
    assert not Path("/opt/failoverd").exists() and not Path("/usr/sbin/failoverd").exists()
    assert example.read_text().endswith("# the operator's own note\n") and policy.exists()
    assert Path("/etc/iproute2/rt_protos.d/failoverd.conf").exists() and Path("/var/lib/failoverd").is_dir()
    # Purge: all of it goes, but the system user and its groups.
    run("apt-get", "purge", "-y", "-q", "failoverd")
    took["remove+purge"] = time.monotonic() - t
    assert not known_to_dpkg()
    after = paths()
    left = {p for p in after - machine if "failoverd" in p}
    # The package's own paths, but directories it shares (/etc, /lib/systemd/system: /usr/lib's by a link).
    left |= {p for p in files if os.path.lexists(p) and not {p, os.path.realpath(p)} & (machine | {"/.", *SCANNED})}
    assert not left, sorted(left)
    assert not Path("/run/failoverd").exists()
    assert run("getent", "passwd", "failoverd").stdout.startswith("failoverd:")
    took["total"] = time.monotonic() - t0
    print("test_deb timings (s):", {k: round(v, 1) for k, v in took.items()})
