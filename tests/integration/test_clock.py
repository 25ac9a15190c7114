"""Clock sanity with real time servers: chronyd serving true time and the lab's liar, in namespaces."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import FAKETIME, ROOT, TIME_SERVERS, GatewayLab

from lab.netns import wait_for


def clock_state(lab: GatewayLab) -> str:
    return str(lab.clock()["state"])


def test_one_liar_among_four_is_flagged_and_the_clock_stays_sane(gwlab: GatewayLab) -> None:
    gwlab.start()
    wait_for(lambda: clock_state(gwlab) == "sane", 15, what="clock SANE")
    rep = gwlab.clock()
    verdicts = {s["server"]: s["state"] for s in rep["sources"]}
    assert verdicts == {
        "198.19.0.123": "agrees",
        "198.19.0.124": "agrees",
        "198.19.0.125": "agrees",
        "198.19.0.126": "falseticker",
    }
    liar = next(s for s in rep["sources"] if s["server"] == "198.19.0.126")
    assert abs(liar["offset_s"] - 1000) < 1
    assert gwlab.ctl("status")["clock"]["state"] == "sane"
    r = subprocess.run(
        [sys.executable, "-m", "failoverd.ctl", "--socket", gwlab.socket, "clock"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert "falseticker" in r.stdout and r.stdout.startswith("clock SANE")


def test_a_lying_majority_gives_suspect(gwlab: GatewayLab) -> None:
    gwlab.start()
    wait_for(lambda: clock_state(gwlab) == "sane", 15, what="clock SANE")
    for address in TIME_SERVERS[:2]:
        gwlab.time_server(address, "+1500")
    gwlab.time_server(TIME_SERVERS[3], "+1500")
    wait_for(lambda: clock_state(gwlab) == "suspect", 10, what="clock SUSPECT")

    # While the servers are being moved, a poll may catch a moment with too few fresh samples to
    # name the lie ("no majority"); the state is SUSPECT either way, and the evidence settles.
    def names_the_lie() -> bool:
        rep = gwlab.clock()
        assert rep["state"] == "suspect", rep
        return any("majority may be lying" in e for e in rep["evidence"])

    wait_for(names_the_lie, 10, what="evidence that the majority may be lying")
    time.sleep(3)
    assert clock_state(gwlab) == "suspect"  # and it never turns into a confident wrong answer
    alarms = [r for r in gwlab.ctl("history", "--last", "200")["records"] if r["kind"] == "alarm"]
    assert any(a["subject"] == "clock" and a["cause"]["code"] == "clock-suspect" for a in alarms)


@pytest.fixture
def fastdrift(tmp_path: Path) -> Iterator[GatewayLab]:
    lab = GatewayLab(tmp_path, drift_ppm=50000).build()  # 5 %: the bound outgrows 0.5 s in ~10 s
    try:
        yield lab
    finally:
        lab.destroy()


def test_all_sources_unreachable_gives_holdover_then_suspect(fastdrift: GatewayLab) -> None:
    lab = fastdrift
    lab.start()
    wait_for(lambda: clock_state(lab) == "sane", 15, what="clock SANE")
    for address in TIME_SERVERS:
        lab.time_server(address, "silent")
    wait_for(lambda: clock_state(lab) == "holdover", 10, what="clock HOLDOVER")
    wait_for(lambda: clock_state(lab) == "suspect", 20, what="clock SUSPECT after holdover")
    assert "exceeds" in lab.clock()["evidence"][0]


@pytest.mark.parametrize(
    ("shift", "expect"),
    [
        ("+1", {"suspect"}),
        ("-1", {"suspect"}),
        # 1000 s is the panic threshold itself: either verdict is right, SANE never is.
        ("+1000", {"suspect", "insane"}),
        ("-1000", {"suspect", "insane"}),
        ("+630720000", {"insane"}),  # +20 years
    ],
)
def test_a_step_of_the_daemons_clock_is_detected_and_failover_is_unchanged(
    gwlab: GatewayLab, shift: str, expect: set[str]
) -> None:
    stamp = gwlab.tmp / "faketime"
    stamp.write_text("+0\n")
    # libfaketime shifts only the daemon's wall clock (never the machine's); monotonic stays real.
    gwlab.start(
        env={
            "LD_PRELOAD": FAKETIME,
            "FAKETIME_TIMESTAMP_FILE": str(stamp),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
    )
    wait_for(lambda: clock_state(gwlab) == "sane", 15, what="clock SANE")
    gwlab.wait_class("critical", "fiber")
    gwlab.start_traffic()
    time.sleep(0.5)
    # The step and a fiber cut at the same moment.
    stamp.write_text(f"{shift}\n")
    gwlab.carrier(False)
    gwlab.wait_class("critical", "mobile", timeout=5)
    time.sleep(0.5)
    traffic = gwlab.stop_traffic()
    assert traffic["max_gap_ms"] < 300, traffic["gaps"]  # as fast as without a step (loose bound)
    wait_for(lambda: clock_state(gwlab) in expect, 15, what=f"clock {expect}")
    steps = gwlab.clock()["steps"]
    assert steps and not steps[-1]["explained"]
    assert abs(steps[-1]["delta_s"] - float(shift)) < 1.0
