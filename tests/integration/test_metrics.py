"""The metrics endpoint of a real daemon, scraped over HTTP from the LAN while the fiber is cut."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from netlab import MOBILE_NAT, PY, GatewayLab
from prometheus_client.parser import text_string_to_metric_families

from lab.netns import wait_for

LISTEN = "198.18.10.1:9469"  # the gateway's LAN address: a monitoring host on the LAN scrapes it
FETCH = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"

# Scrapes back to back for argv[2] seconds; prints how many succeeded.
HAMMER = (
    "import sys, time, urllib.request\n"
    "n, end = 0, time.monotonic() + float(sys.argv[2])\n"
    "while time.monotonic() < end:\n"
    "    urllib.request.urlopen(sys.argv[1], timeout=5).read()\n"
    "    n += 1\n"
    "print(n)\n"
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_text(lab: GatewayLab, listen: str = LISTEN) -> str:
    return lab.topo.sh("lan", PY, "-c", FETCH, f"http://{listen}/metrics").stdout


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def cls(name: str, **labels: str) -> dict[str, str]:
    return {"class": name, **labels}


def test_metrics_follow_a_fiber_cut_and_pass_promtool(gwlab: GatewayLab) -> None:
    text = gwlab.policy_path.read_text()
    assert "control:\n  max_override: 1h\n" in text
    gwlab.policy_path.write_text(
        text.replace(
            "control:\n  max_override: 1h\n", f'control:\n  max_override: 1h\n  metrics: {{listen: "{LISTEN}"}}\n'
        )
    )
    gwlab.start()
    gwlab.wait_class("critical", "fiber")
    wait_for(lambda: gwlab.uplink_state("mobile") == "UP", 10, what="mobile UP")
    time.sleep(0.5)
    before = parse(scrape_text(gwlab))
    assert value(before, "failoverd_uplink_state", uplink="fiber", state="UP") == 1
    assert value(before, "failoverd_uplink_carrier", uplink="fiber") == 1
    assert value(before, "failoverd_class_uplink", **cls("critical", uplink="fiber")) == 1
    assert value(before, "failoverd_class_path_index", **cls("critical")) == 0
    assert value(before, "failoverd_class_usable_uplinks", **cls("bulk")) == 2
    switched = {c: value(before, "failoverd_class_switches_total", **cls(c)) for c in ("critical", "bulk")}
    assert switched["critical"] is not None and switched["bulk"] is not None
    assert value(before, "failoverd_uplink_state", uplink="sat", state="STANDBY") == 1
    rtt = value(before, "failoverd_uplink_rtt_seconds", uplink="fiber")
    assert rtt is not None and 0 < rtt < 0.1, rtt  # veth and a responder: well under 100 ms
    assert (value(before, "failoverd_uplink_loss_ratio", uplink="fiber") or 0) <= 0.1  # a busy CI machine may lose one
    probe = "udp-echo:198.19.0.1:7"
    sent = value(before, "failoverd_probes_total", uplink="fiber", probe=probe) or 0
    assert sent > 10  # 50 ms probes, seconds after the start
    assert (value(before, "process_resident_memory_bytes") or 0) > 0
    assert (value(before, "failoverd_engine_steps_total") or 0) > 0

    gwlab.carrier(False)
    gwlab.wait_class("critical", "mobile", timeout=5)
    time.sleep(0.5)
    text = scrape_text(gwlab)
    after = parse(text)
    assert value(after, "failoverd_uplink_state", uplink="fiber", state="DOWN") == 1
    assert value(after, "failoverd_uplink_state", uplink="fiber", state="UP") == 0
    assert value(after, "failoverd_uplink_carrier", uplink="fiber") == 0
    assert value(after, "failoverd_uplink_usable", uplink="fiber") == 0
    assert value(after, "failoverd_class_uplink", **cls("critical", uplink="mobile")) == 1
    assert value(after, "failoverd_class_uplink", **cls("critical", uplink="fiber")) == 0
    assert value(after, "failoverd_class_path_index", **cls("critical")) == 1
    assert value(after, "failoverd_class_switches_total", **cls("critical")) == switched["critical"] + 1
    assert value(after, "failoverd_class_switches_total", **cls("bulk")) == switched["bulk"] + 1
    assert value(after, "failoverd_class_usable_uplinks", **cls("bulk")) == 1
    assert (value(after, "failoverd_uplink_state_age_seconds", uplink="fiber") or 99) < 5
    assert (value(after, "failoverd_probes_total", uplink="fiber", probe=probe) or 0) > sent
    # The failover's kernel write was timed: from the carrier event to the routes in place.
    assert (value(after, "failoverd_effect_latency_seconds_count") or 0) >= 2  # the start's placement, the cut
    assert (value(after, "failoverd_effect_latency_seconds_bucket", le="1.0") or 0) >= 2

    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian's prometheus package, installed by scripts/bootstrap) is missing")
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert r.returncode == 0 and not r.stdout and not r.stderr, (r.stdout, r.stderr)
    status = gwlab.ctl("status")["services"]["metrics"]
    assert status["listen"] == LISTEN and status["serving"] and status["scrapes"] == 2


def test_a_reload_moves_the_endpoint_and_a_bad_address_is_refused_with_its_place(gwlab: GatewayLab) -> None:
    original = gwlab.policy_path.read_text()
    gwlab.start()  # metrics off: nothing listens
    gwlab.wait_class("critical", "fiber")
    assert gwlab.ctl("status")["services"]["metrics"] == {"listen": None, "serving": False, "scrapes": 0, "error": None}
    moved = "198.18.10.1:9470"
    gwlab.policy_path.write_text(original.replace("control:\n", f'control:\n  metrics: {{listen: "{moved}"}}\n'))
    reply = gwlab.ctl("reload")
    assert reply["ok"] and reply["services"]["metrics"] == f"applied: listening on {moved}", reply
    assert value(parse(scrape_text(gwlab, moved)), "failoverd_class_uplink", **cls("critical", uplink="fiber")) == 1
    # A name where an address belongs: refused with file:line:col, the endpoint stays.
    gwlab.policy_path.write_text(original.replace("control:\n", 'control:\n  metrics: {listen: "gw.lan:9469"}\n'))
    reply = gwlab.ctl("reload")
    line = 1 + original.split("\n").index("control:") + 1
    assert not reply["ok"]
    assert any(
        p.startswith(f"{gwlab.policy_path}:{line}:") and "control.metrics.listen" in p and "'gw.lan'" in p
        for p in reply["problems"]
    ), reply
    assert scrape_text(gwlab, moved).startswith("# HELP")
    # Off again.
    gwlab.policy_path.write_text(original)
    reply = gwlab.ctl("reload")
    assert reply["services"]["metrics"] == "applied: endpoint off", reply
    r = gwlab.topo.sh("lan", PY, "-c", FETCH, f"http://{moved}/metrics", check=False)
    assert r.returncode != 0 and "Connection refused" in r.stderr


def test_scrapes_back_to_back_do_not_hold_up_a_failover(gwlab: GatewayLab, tmp_path: Path) -> None:
    """Two clients scrape as fast as they can while the fiber goes silent: probes still judge it and
    the class moves within the bound of the same test without scrapes (test_daemon's blackhole test)."""
    text = gwlab.policy_path.read_text()
    gwlab.policy_path.write_text(text.replace("control:\n", f'control:\n  metrics: {{listen: "{LISTEN}"}}\n'))
    gwlab.start()
    gwlab.wait_class("critical", "fiber")
    gwlab.start_traffic()
    outs = [tmp_path / f"hammer{i}.out" for i in range(2)]
    hammers = [gwlab.topo.spawn("lan", [PY, "-c", HAMMER, f"http://{LISTEN}/metrics", "4"], log=o) for o in outs]
    time.sleep(1)
    cut = time.monotonic()
    gwlab.blackhole(True)
    gwlab.wait_class("critical", "mobile", timeout=5)
    moved = time.monotonic() - cut
    for h in hammers:
        assert h.wait(timeout=20) == 0
    scrapes = [int(o.read_text().split()[-1]) for o in outs]
    time.sleep(0.3)
    traffic = gwlab.stop_traffic()
    assert sum(scrapes) > 40, scrapes  # the endpoint kept answering through the failover
    assert traffic["switches"] and traffic["switches"][-1]["to"] == MOBILE_NAT
    assert traffic["max_gap_ms"] < 3000, (traffic["gaps"], moved, scrapes)
    print(f"moved after {moved:.3f}s, max gap {traffic['max_gap_ms']} ms, scrapes {scrapes}")
