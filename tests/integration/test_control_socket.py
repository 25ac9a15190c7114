"""A local user who may only read the control socket cannot use up the daemon's descriptors and stop routing."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import GatewayLab

from failoverd.control import unix

from .test_confined import SYSTEM_PYTHON, ctl_as

READER_UID = 64001  # no group of the socket's: it may read, never change anything
CONNECTIONS = 1500  # more than systemd's default soft limit of open files for a service (1024)

HOLDER = """
import socket, sys
held = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    held.append(s)
print(len(held), flush=True)
sys.stdin.read()  # held until the test closes our stdin
"""


@pytest.fixture
def open_lab() -> Iterator[GatewayLab]:
    """The lab gateway with its socket open to every local user for reading (mode 0666)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates fo-* network namespaces and switches users")
    where = Path(tempfile.mkdtemp(prefix="fo-ctlsock-"))
    where.chmod(0o755)  # the reader reaches the socket
    try:
        lab = GatewayLab(where)
        lab.policy_path.write_text(
            lab.policy_path.read_text().replace("control:\n", "control:\n  socket_mode: '0666'\n", 1)
        )
        lab.build()
        try:
            yield lab
        finally:
            lab.destroy()
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_a_reader_holding_a_thousand_connections_does_not_stop_a_failover(open_lab: GatewayLab) -> None:
    lab = open_lab
    daemon = lab.start()
    lab.wait_class("critical", "fiber")
    # The open-files limit systemd gives a service unless told otherwise (soft 1024), which the daemon keeps.
    subprocess.run(["prlimit", "--pid", str(daemon.pid), "--nofile=1024:"], check=True)

    holder = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", HOLDER, lab.socket, str(CONNECTIONS)],
        user=READER_UID,
        group=READER_UID,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == str(CONNECTIONS)
        time.sleep(0.5)  # the daemon has seen them all
        fds = len(list(Path(f"/proc/{daemon.pid}/fd").iterdir()))
        assert fds < 200, f"the daemon holds {fds} descriptors"
        # The reader's next request is turned away with the reason; root still gets in.
        r = ctl_as(READER_UID, [], lab, "status")
        assert r.returncode == 1 and f"too many connections from uid{READER_UID}" in r.stderr, r
        assert lab.ctl("status")["site"]

        # A fiber cut meanwhile: the daemon lives and fails over as usual.
        cut = time.monotonic()
        lab.carrier(False)
        lab.wait_class("critical", "mobile", timeout=5)
        assert time.monotonic() - cut < 5
        time.sleep(1.5)  # a clock round and a few probe rounds with the connections still held
        assert daemon.poll() is None
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    # The reader's connections are given back as they close.
    time.sleep(0.3)
    r = ctl_as(READER_UID, [], lab, "status")
    assert r.returncode == 0, r
    log = lab.log.read_text()
    assert "Traceback" not in log and "Too many open files" not in log, log[-3000:]
    assert '"control-busy"' in log and f"({unix.PER_USER} at once)" in log
