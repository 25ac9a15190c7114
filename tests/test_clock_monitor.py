"""The clock monitor end to end on loopback (no root): SNTP servers, a gpsd feed, the verdict."""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from failoverd.clock import sntp
from failoverd.clock.monitor import FLOOR_SLACK, ClockMonitor
from failoverd.policy import parse_policy_text
from failoverd.statedir import StateDir

ROOT = Path(__file__).resolve().parent.parent
GPS_WEEK_ROLLOVER = 1024 * 7 * 86400  # a receiver with the 2019 bug reports dates 19.6 years back


@pytest.fixture
def servers() -> Iterator[list[int]]:
    """Three SNTP servers on loopback serving this machine's own time (the liar with offset 0)."""
    ports = [12301, 12302, 12303]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lab.liar", "--bind", "127.0.0.1", "--port", str(p), "--offset", "0"], cwd=ROOT
        )
        for p in ports
    ]
    time.sleep(0.8)
    try:
        yield ports
    finally:
        for p in procs:
            p.terminate()
            p.wait(5)


async def fake_gpsd(shift: float) -> tuple[asyncio.AbstractServer, int]:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b'{"class":"VERSION","release":"3.22"}\n')
        when = datetime.fromtimestamp(time.time() - shift, UTC).isoformat().replace("+00:00", "Z")
        writer.write(json.dumps({"class": "TPV", "mode": 3, "time": when, "ept": 0.005}).encode() + b"\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def policy(ports: list[int], gpsd_port: int) -> str:
    servers = "\n".join(f"    - {{address: 127.0.0.1, port: {p}, operator: op{p}}}" for p in ports)
    return f"""
site: t
uplinks: [{{name: a, interface: lo, point_to_point: true}}]
classes: [{{name: all, path: [a]}}]
clock:
  chrony: false
  gpsd: "127.0.0.1:{gpsd_port}"
  servers:
{servers}
"""


@pytest.mark.parametrize(
    ("shift", "state", "gps_verdict"), [(0.0, "sane", "agrees"), (GPS_WEEK_ROLLOVER, "sane", "falseticker")]
)
async def test_gps_is_one_more_class_and_a_week_rollover_is_a_falseticker(
    servers: list[int], shift: float, state: str, gps_verdict: str
) -> None:
    gps, port = await fake_gpsd(shift)
    async with gps:
        mon = ClockMonitor(parse_policy_text(policy(servers, port), "t.yaml"))
        verdict = await mon.round()
    assert verdict.state.value == state, verdict.evidence
    rep = mon.report()
    gps_row = next(s for s in rep["sources"] if s["class"] == "gps")
    assert gps_row["state"] == gps_verdict
    assert rep["consensus"]["of"] == 4


async def test_the_last_good_time_is_a_floor_after_restart_and_saved_only_now_and_then(
    servers: list[int], tmp_path: Path
) -> None:
    text = "\n".join(f"    - {{address: 127.0.0.1, port: {p}, operator: op{p}}}" for p in servers)
    pol = parse_policy_text(
        f"site: t\nuplinks: [{{name: a, interface: lo, point_to_point: true}}]\n"
        f"classes: [{{name: all, path: [a]}}]\nclock:\n  chrony: false\n  servers:\n{text}\n",
        "t.yaml",
    )
    saved = tmp_path / "clock.json"
    mon = ClockMonitor(pol, StateDir(tmp_path))
    assert (await mon.round()).state.value == "sane"
    first = json.loads(saved.read_text())["good_wall"]
    assert abs(first - time.time()) < 5
    assert (await mon.round()).state.value == "sane"
    assert json.loads(saved.read_text())["good_wall"] == first  # not rewritten every round
    assert mon.budget().floor > first - FLOOR_SLACK  # but the floor in memory moves on

    # A restart starts from the saved time: the clock may not fall an hour below it.
    assert ClockMonitor(pol, StateDir(tmp_path)).budget().floor == first - FLOOR_SLACK

    # A saved time ahead of a clock judged sane came from a wrong clock: it is replaced at once.
    saved.write_text(json.dumps({"good_wall": time.time() + 600}))
    mon = ClockMonitor(pol, StateDir(tmp_path))
    assert (await mon.round()).state.value == "sane"
    assert json.loads(saved.read_text())["good_wall"] <= time.time()


async def test_a_query_without_a_descriptor_left_is_a_failed_query(monkeypatch: pytest.MonkeyPatch) -> None:
    """EMFILE at socket() was raised out of the clock service and ended the daemon (a local user holding
    a thousand control connections did it); it is one server's failed query like a timeout."""

    def no_descriptor(*_: object) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(sntp, "socket", SimpleNamespace(**{**vars(socket), "socket": no_descriptor}))
    reply = await sntp.query("198.51.100.7")
    assert not reply.ok and reply.error == "Too many open files", reply
