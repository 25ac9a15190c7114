"""A daemon killed mid-drill, restarted: the terminal it switched on is switched off, the drill recorded aborted."""

from __future__ import annotations

import signal
from typing import Any

from netlab import GatewayLab

from lab.netns import wait_for

# The lab's satellite terminal is sat0: its activation is `ip link set dev sat0 up`, for real.
DRILL = """
drills:
  - uplink: sat
    every: 7d
    retry_after: 1h
    rounds: 300                # 30 s of 100 ms probes: still running when the daemon is killed
    max_bytes: 1MB
    max_duration: 120s
"""


def sat0_up(lab: GatewayLab) -> bool:
    return "state UP" in lab.topo.sh("gw", "ip", "link", "show", "dev", "sat0").stdout


def drill_row(lab: GatewayLab) -> dict[str, Any]:
    rows: list[dict[str, Any]] = lab.ctl("drill", "status")["drills"]
    return next(r for r in rows if r["uplink"] == "sat")


def test_kill9_mid_drill_then_restart_switches_the_terminal_off_and_reports_the_drill_aborted(
    gwlab: GatewayLab,
) -> None:
    gwlab.policy_path.write_text(gwlab.policy_path.read_text() + DRILL)
    gwlab.start()
    gwlab.wait_class("critical", "fiber")
    wait_for(
        lambda: gwlab.uplink_state("fiber") == "UP" and gwlab.uplink_state("mobile") == "UP",
        10,
        what="fiber and mobile UP (a drill waits for every other uplink)",
    )
    assert not sat0_up(gwlab)
    wait_for(lambda: gwlab.ctl("drill", "run", "sat")["ok"], 10, 0.5, "the drill of sat to start")
    wait_for(lambda: sat0_up(gwlab), 10, 0.1, "sat0 switched on by the drill")
    wait_for(
        lambda: (drill_row(gwlab)["running"] or {}).get("phase") == "checking",
        15,
        0.2,
        "the drill to check sat",
    )
    assert gwlab.kill(signal.SIGKILL) == -signal.SIGKILL
    assert sat0_up(gwlab)  # nobody switched it off: the daemon is gone

    gwlab.start()
    # The first step switches off every cold uplink no adopted class is routed via.
    wait_for(lambda: not sat0_up(gwlab), 10, 0.1, "sat0 switched off after the restart")
    assert gwlab.uplink_state("sat") == "STANDBY"
    assert gwlab.cls("critical") == "fiber"  # nothing moved
    row = drill_row(gwlab)
    assert row["running"] is None
    assert row["last"]["verdict"] == "aborted", row
    assert row["last"]["cause"]["code"] == "drill-restart"
    assert "restarted mid-drill" in row["last"]["cause"]["text"]
    # Retried as any aborted drill, retry_after (1 h) from now, not at the policy's offset after start.
    assert 3500 < row["due_in_s"] <= 3600, row
    records = gwlab.ctl("history", "--last", "500")["records"]
    ended = [r for r in records if r["kind"] == "drill" and r.get("verdict")]
    assert ended[-1]["verdict"] == "aborted" and ended[-1]["deactivated"] is True, ended
    assert ended[-1]["cause"]["code"] == "drill-restart"
    released = [r for r in records if r["kind"] == "standby" and r["action"] == "deactivate"]
    assert released and released[-1]["cause"]["code"] == "restart-release", released
    # A second restart does not end the same drill again.
    assert gwlab.kill(signal.SIGKILL) == -signal.SIGKILL
    gwlab.start()
    wait_for(lambda: gwlab.uplink_state("fiber") == "UP", 10, what="fiber UP after the second restart")
    records = gwlab.ctl("history", "--last", "500")["records"]
    assert len([r for r in records if r["kind"] == "drill" and r.get("verdict") == "aborted"]) == 1
    assert drill_row(gwlab)["last"]["cause"]["code"] == "drill-restart"
