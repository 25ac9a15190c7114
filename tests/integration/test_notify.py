"""Alarms reach people when the primary is down: a webhook behind the internet, reached over the mobile uplink."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from netlab import MOBILE_NAT, ROOT, GatewayLab

from lab.netns import wait_for

RECEIVER = "198.19.2.2"


def received(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_fiber_cut_is_reported_over_the_mobile_uplink_within_seconds(gwlab: GatewayLab) -> None:
    out = gwlab.tmp / "webhook.jsonl"
    gwlab.topo.addr("inet", "lo", f"{RECEIVER}/32")
    receiver = [sys.executable, str(ROOT / "tests/integration/webhook_receiver.py"), "--bind", RECEIVER]
    gwlab.topo.spawn("inet", [*receiver, "--port", "8080", "--out", str(out)], cwd=ROOT)
    wait_for(lambda: gwlab.topo.sh("inet", "ss", "-ltn").stdout.count(f"{RECEIVER}:8080") > 0, 10, what="webhook")
    alarms = f"""
alarms:
  notifiers:
    - {{name: noc, kind: webhook, url: "http://{RECEIVER}:8080/alerts"}}
    - {{name: oncall, kind: webhook, url: "http://{RECEIVER}:8080/oncall", format: alertmanager}}
  route:
    - {{kind: [uplink-down], notify: [noc]}}
  escalation:
    - {{after: 2s, notify: [oncall]}}
"""
    gwlab.policy_path.write_text(gwlab.policy_path.read_text() + alarms)
    gwlab.start()
    gwlab.wait_class("critical", "fiber")
    cut = time.time()
    gwlab.carrier(False)

    def raised() -> bool:
        return any(r["path"] == "/alerts" and r["body"]["state"] == "raised" for r in received(out))

    wait_for(raised, 10, what="the uplink-down alarm at the webhook")
    first = next(r for r in received(out) if r["path"] == "/alerts")
    # Over the mobile uplink (its NAT address), a moment after the cut: the fiber has no carrier.
    assert first["from"] == MOBILE_NAT, first
    assert first["at"] - cut < 3.0, first["at"] - cut  # loose: the decision is immediate on carrier loss
    assert first["body"]["site"] == "test-gw" and first["body"]["cause"]["code"] == "carrier-loss"
    # Not acknowledged for 2 s: escalated to on-call, in Alertmanager's form.
    wait_for(lambda: any(r["path"] == "/oncall" for r in received(out)), 10, what="the escalation")
    (alert,) = next(r for r in received(out) if r["path"] == "/oncall")["body"]
    assert alert["labels"]["alertname"] == "failoverd_uplink_down" and "startsAt" in alert
    # Spliced: both hear it is over; Alertmanager's form says resolved with endsAt.
    gwlab.carrier(True)
    wait_for(lambda: len([r for r in received(out) if r["path"] == "/oncall"]) >= 2, 15, what="the clear to on-call")
    cleared = [r["body"] for r in received(out) if r["path"] == "/alerts" and r["body"]["state"] == "cleared"]
    assert [c["id"] for c in cleared] == ["uplink-down:fiber"]
    resolved = [r["body"][0] for r in received(out) if r["path"] == "/oncall"][-1]
    assert "endsAt" in resolved
    status = gwlab.ctl("status")["services"]["notify"]
    assert status["noc"]["sent"] >= 2 and status["noc"]["queued"] == 0, status
