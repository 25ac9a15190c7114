"""Notifiers: routing of alarm records, delivery to a real HTTP endpoint, a real command and a real datagram socket."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from failoverd.engine import events as ev
from failoverd.engine.state import EngineState, initial_state
from failoverd.engine.step import step
from failoverd.observe.journal import Journal
from failoverd.policy import parse_policy_text
from failoverd.policy.model import Policy
from failoverd.services.history import History
from failoverd.services.notify import DeliveryError, NotifierService, alertmanager, document
from failoverd.statedir import StateDir

BASE = """
site: north
uplinks:
  - {name: a, interface: a0, next_hop: 192.0.2.1}
classes:
  - {name: vital, path: [a]}
alarms:
  notifiers:
    - {name: noc, kind: webhook, url: "http://127.0.0.1:PORT/hook", format: FORMAT}
    - {name: sms, kind: exec, run: [SH, -c, "cat >> OUT"]}
    - {name: log, kind: journal, socket: SOCKET}
    - {name: duty, kind: exec, run: [SH, -c, "cat >> DUTY"]}
  route:
    - {severity: [critical], notify: [noc, sms, log]}
    - {notify: [log]}
  escalation:
    - {after: 10m, notify: [duty]}
"""


class View:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        state, _ = step(initial_state(policy, 0.0), ev.Tick(), policy, 0.0)  # carrier only: a is UP at once
        self.state: EngineState = state


def _policy(tmp: Path, port: int, fmt: str = "plain") -> Policy:
    text = (
        BASE.replace("PORT", str(port))
        .replace("FORMAT", fmt)
        .replace("SH", "/bin/sh")
        .replace("OUT", str(tmp / "sms.jsonl"))
        .replace("DUTY", str(tmp / "duty.jsonl"))
        .replace("SOCKET", str(tmp / "journal.sock"))
    )
    return parse_policy_text(text, "notify.yaml")


def _alarm(state: str, aid: str, severity: str, level: int = 0) -> dict[str, Any]:
    return {
        "kind": "alarm",
        "state": state,
        "id": aid,
        "severity": severity,
        "subject": aid.split(":")[1],
        "level": level,
        "cause": {"code": "carrier-loss", "text": "carrier lost on a0", "evidence": {}},
    }


def test_routes_escalations_and_who_hears_of_the_end(tmp_path: Path) -> None:
    svc = NotifierService(View(_policy(tmp_path, 1)), History(Journal(StateDir(None))))
    assert svc.recipients(_alarm("raised", "class-down:vital", "critical")) == ["noc", "sms", "log"]
    assert svc.recipients(_alarm("raised", "uplink-down:a", "warning")) == ["log"]
    assert svc.recipients(_alarm("escalated", "uplink-down:a", "warning", level=1)) == ["duty"]
    # Whoever was told it was raised, or took an escalation, is told that it was acknowledged or cleared.
    assert svc.recipients(_alarm("acked", "uplink-down:a", "warning")) == ["duty", "log"]
    assert svc.recipients(_alarm("repeated", "uplink-down:a", "warning", level=1)) == ["log", "duty"]
    assert svc.recipients(_alarm("cleared", "uplink-down:a", "warning")) == ["duty", "log"]
    # One this run told no one of (raised before a restart, resumed since) clears to its route.
    assert svc.recipients(_alarm("resumed", "uplink-down:b", "warning")) == []
    assert svc.recipients(_alarm("cleared", "uplink-down:b", "warning")) == ["log"]


def test_alertmanager_form_resolves_a_cleared_alarm() -> None:
    doc = document({**_alarm("cleared", "uplink-down:a", "info"), "wall": 1_790_000_100.0}, "north")
    (alert,) = alertmanager(doc, 1_790_000_000.0)
    assert alert["labels"]["alertname"] == "failoverd_uplink_down" and alert["labels"]["site"] == "north"
    assert alert["startsAt"] == "2026-09-21T14:13:20Z" and alert["endsAt"] == "2026-09-21T14:15:00Z"


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK on the webhook's socket needs CAP_NET_ADMIN")
def test_each_kind_delivers_and_a_failing_endpoint_is_retried(tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []
    statuses = [503, 200, 200, 200]  # the first attempt is refused: the record is sent again

    async def endpoint(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
        received.append(json.loads(await reader.readexactly(length)))
        writer.write(f"HTTP/1.1 {statuses.pop(0)} x\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(tmp_path / "journal.sock"))
    journal.setblocking(False)

    async def scenario() -> NotifierService:
        server = await asyncio.start_server(endpoint, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        history = History(Journal(StateDir(None)))
        svc = NotifierService(View(_policy(tmp_path, port)), history)
        task = asyncio.create_task(svc.run())
        await asyncio.sleep(0)
        history.add(_alarm("raised", "class-down:vital", "critical"), 1.0)
        for _ in range(100):  # the 503, a second's backoff, then the retry
            if len(received) >= 2 and (tmp_path / "sms.jsonl").exists():
                break
            await asyncio.sleep(0.05)
        task.cancel()
        server.close()
        return svc

    svc = asyncio.run(scenario())
    assert [r["id"] for r in received] == ["class-down:vital", "class-down:vital"]
    assert received[0]["site"] == "north" and received[0]["state"] == "raised"
    assert svc.status()["noc"]["failed_attempts"] == 1 and svc.status()["noc"]["sent"] == 1
    sms = [json.loads(line) for line in (tmp_path / "sms.jsonl").read_text().splitlines()]
    assert [s["id"] for s in sms] == ["class-down:vital"]
    datagram = journal.recv(65536).decode()
    fields = dict(line.split("=", 1) for line in datagram.splitlines())
    assert fields["PRIORITY"] == "2" and fields["FAILOVERD_ALARM_ID"] == "class-down:vital"
    assert fields["SYSLOG_IDENTIFIER"] == "failoverd" and "carrier lost on a0" in fields["MESSAGE"]
    journal.close()


def test_a_command_that_fails_is_reported_with_its_exit_and_message(tmp_path: Path) -> None:
    text = BASE.replace('[SH, -c, "cat >> OUT"]', f"[{sys.executable}, -c, \"import sys; sys.exit('modem busy')\"]")
    policy = parse_policy_text(
        text.replace("PORT", "1")
        .replace("FORMAT", "plain")
        .replace("SH", "/bin/sh")
        .replace("DUTY", "/dev/null")
        .replace("SOCKET", str(tmp_path / "none.sock")),
        "notify.yaml",
    )
    svc = NotifierService(View(policy), History(Journal(StateDir(None))))

    with pytest.raises(DeliveryError, match="exited 1: modem busy"):
        asyncio.run(svc.deliver(policy.alarms.notifiers["sms"], _alarm("raised", "class-down:vital", "critical")))
