"""A private system-like D-Bus and the ModemManager simulator on it, for the tests that need them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
