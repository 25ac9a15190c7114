"""failoverd run against a real kernel: namespaces, veth links, routes, nftables, real signals."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from netlab import FIBER_NAT, MOBILE_NAT, ROOT, SAT_NAT, GatewayLab

from lab.netns import wait_for


def ctl_exit(lab: GatewayLab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "failoverd.ctl", "--socket", lab.socket, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=20,
        check=False,
    )


def history(lab: GatewayLab, kind: str) -> list[dict]:
    return [r for r in lab.ctl("history", "--last", "500")["records"] if r["kind"] == kind]


def test_fiber_cut_moves_traffic_and_recovery_waits_for_preempt(gwlab: GatewayLab) -> None:
    gwlab.start()
    gwlab.wait_class("critical", "fiber")
    gwlab.start_traffic()
    time.sleep(1)
    gwlab.carrier(False)
    gwlab.wait_class("critical", "mobile", timeout=5)
    assert gwlab.cls("bulk") == "mobile"
    time.sleep(1)
    gwlab.carrier(True)
    wait_for(lambda: gwlab.uplink_state("fiber") == "UP", 10, what="fiber UP again")
    up_at = time.monotonic()
    assert gwlab.cls("critical") == "mobile", "failback must wait for the preempt delay"
    gwlab.wait_class("critical", "fiber", timeout=10)
    assert time.monotonic() - up_at >= 2.5  # preempt delay 3 s, polled
    time.sleep(0.5)
    traffic = gwlab.stop_traffic()
    # The stream really crossed the other ISP, and came back.
    assert traffic["by_source"].get(MOBILE_NAT, 0) > 100, traffic
    sources = [s["to"] for s in traffic["switches"]]
    assert sources[:2] == [MOBILE_NAT, FIBER_NAT], traffic["switches"]
    # Carrier loss is seen at once: the outage is far below any probe-based detection (loose bound).
    assert traffic["max_gap_ms"] < 1000, traffic["gaps"]
    decisions = [r for r in history(gwlab, "decision") if r["class"] == "critical"]
    assert [d["uplink"] for d in decisions][-3:] == ["fiber", "mobile", "fiber"]
    assert decisions[-1]["cause"]["code"] == "preempt"


def test_silent_blackhole_is_detected_by_probes(gwlab: GatewayLab) -> None:
    gwlab.start()
    gwlab.wait_class("critical", "fiber")
    gwlab.start_traffic()
    time.sleep(0.5)
    gwlab.blackhole(True)
    gwlab.wait_class("critical", "mobile", timeout=5)
    status = gwlab.ctl("status")
    fiber = next(u for u in status["uplinks"] if u["name"] == "fiber")
    assert fiber["state"] == "DOWN" and fiber["carrier"] is True
    assert fiber["cause"]["code"] == "probe-loss"
    time.sleep(0.5)
    traffic = gwlab.stop_traffic()
    assert traffic["switches"] and traffic["switches"][-1]["to"] == MOBILE_NAT
    assert traffic["max_gap_ms"] < 3000, traffic["gaps"]


def test_one_dead_target_of_three_does_not_fail_the_uplink(gwlab: GatewayLab) -> None:
    gwlab.start()
    gwlab.wait_class("critical", "fiber")
    gwlab.kill_target("198.19.0.3")
    time.sleep(2)
    fiber = next(u for u in gwlab.ctl("status")["uplinks"] if u["name"] == "fiber")
    failed = [t["probe"] for t in fiber["targets"] if t["failed"]]
    assert failed == ["udp-echo:198.19.0.3:7"]
    assert fiber["state"] == "UP"
    assert gwlab.cls("critical") == "fiber"


def test_manual_failover_drain_and_release(gwlab: GatewayLab) -> None:
    gwlab.start()
    gwlab.wait_class("critical", "fiber")
    gwlab.start_traffic()
    time.sleep(0.5)
    r = ctl_exit(gwlab, "failover", "critical", "--to", "mobile", "--for", "5m", "--reason", "carrier test")
    assert r.returncode == 0, r.stderr
    assert "override o1" in r.stdout and "critical: fiber -> mobile" in r.stdout
    assert gwlab.cls("critical") == "mobile"
    # Refusals name their reason and change nothing.
    r = ctl_exit(gwlab, "failover", "critical", "--to", "satellite", "--reason", "x")
    assert r.returncode == 1 and 'unknown uplink "satellite"' in r.stderr
    r = ctl_exit(gwlab, "failover", "critical", "--to", "mobile", "--for", "5 parsecs", "--reason", "x")
    assert r.returncode == 1 and "invalid duration" in r.stderr
    before = gwlab.probe_packets("isp1")
    r = ctl_exit(gwlab, "drain", "fiber", "--reason", "splice repair")
    assert r.returncode == 0, r.stderr
    assert gwlab.cls("bulk") == "mobile"
    time.sleep(1)
    # Router-originated probes still leave by their own uplink while every class is elsewhere.
    assert gwlab.probe_packets("isp1") - before > 20
    assert gwlab.uplink_state("fiber") == "UP"
    traffic_mid = gwlab.ctl("status")["overrides"]
    assert {o["id"] for o in traffic_mid} == {"o1", "o2"}
    r = ctl_exit(gwlab, "release", "--all")
    assert r.returncode == 0 and "released o1, o2" in r.stdout
    gwlab.wait_class("critical", "fiber", timeout=5)
    gwlab.wait_class("bulk", "fiber", timeout=5)
    time.sleep(0.5)
    traffic = gwlab.stop_traffic()
    # The scoped conntrack flush re-NATs the moved flow: it really left by the other ISP.
    assert [s["to"] for s in traffic["switches"]] == [MOBILE_NAT, FIBER_NAT], traffic["switches"]
    r = ctl_exit(gwlab, "release", "o7")
    assert r.returncode == 1 and 'no override "o7"' in r.stderr


def test_owned_route_or_rule_deleted_by_hand_is_restored(gwlab: GatewayLab) -> None:
    gwlab.start()
    gwlab.wait_class("critical", "fiber")
    time.sleep(0.3)
    routes, rules = gwlab.routes(), gwlab.rules()
    table = routes[1].split("table ")[1].split()[0]
    gwlab.topo.sh("gw", "ip", "route", "del", "default", "table", table)
    gwlab.topo.sh("gw", "ip", "rule", "del", "priority", "20002")
    wait_for(lambda: gwlab.routes() == routes and gwlab.rules() == rules, 5, what="owned state restored")
    assert history(gwlab, "restored")
    # A route that is not failoverd's (no protocol 74) is never touched.
    gwlab.topo.sh("gw", "ip", "route", "add", "default", "via", "198.18.2.1", "table", "7150")
    time.sleep(1)
    assert "default via 198.18.2.1 dev mob1" in gwlab.topo.sh("gw", "ip", "route", "show", "table", "7150").stdout


def test_kill9_keeps_forwarding_and_restart_converges(gwlab: GatewayLab) -> None:
    gwlab.start()
    gwlab.wait_class("critical", "fiber")
    r = ctl_exit(gwlab, "failover", "critical", "--to", "mobile", "--for", "10m", "--reason", "before crash")
    assert r.returncode == 0, r.stderr
    routes, rules = gwlab.routes(), gwlab.rules()
    gwlab.start_traffic()
    time.sleep(0.5)
    assert gwlab.kill(signal.SIGKILL) == -signal.SIGKILL
    # A stale route of ours, as a crashed older version might have left it.
    gwlab.topo.sh("gw", "ip", "route", "add", "blackhole", "198.51.100.0/24", "table", "7150", "proto", "74")
    time.sleep(1)
    assert gwlab.routes() != routes  # the stale one is there ...
    gwlab.start()
    wait_for(lambda: gwlab.routes() == routes, 5, what="stale route purged")
    assert gwlab.rules() == rules
    status = gwlab.ctl("status")
    assert [o["id"] for o in status["overrides"]] == ["o1"]
    critical = next(c for c in status["classes"] if c["name"] == "critical")
    assert critical["uplink"] == "mobile"
    time.sleep(1)
    traffic = gwlab.stop_traffic()
    # Forwarding never stopped: the daemon was dead for over a second.
    assert traffic["max_gap_ms"] < 500, traffic["gaps"]
    assert set(traffic["by_source"]) == {MOBILE_NAT}, traffic["by_source"]


def test_broken_policy_on_reload_is_refused_and_the_old_one_stays(gwlab: GatewayLab) -> None:
    gwlab.start()
    gwlab.wait_class("critical", "fiber")
    good = gwlab.policy_path.read_text()
    broken = good.replace("path: [fiber, mobile, sat]\n    preempt_delay: 3s", "path: [fiber, lte]")
    gwlab.policy_path.write_text(broken)
    line = broken.splitlines().index("    path: [fiber, lte]") + 1
    r = ctl_exit(gwlab, "reload")
    assert r.returncode == 1
    where = f"{gwlab.policy_path}:{line}:19: classes.0.path.1"
    assert f'{where}: class "critical": path names unknown uplink "lte"' in r.stderr
    # SIGHUP takes the same path.
    assert gwlab.daemon is not None
    gwlab.daemon.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert "reload-refused" in gwlab.log.read_text()
    assert gwlab.cls("critical") == "fiber"
    gwlab.carrier(False)
    gwlab.wait_class("critical", "mobile", timeout=5)  # the old policy is still doing its job
    gwlab.policy_path.write_text(good.replace("preempt_delay: 2s", "preempt_delay: 0s"))
    r = ctl_exit(gwlab, "reload")
    assert r.returncode == 0, r.stderr
    # Each service says what it did with the new policy; the daemon itself reports on each.
    for service in ("engine", "netlink", "probes", "clock", "control"):
        assert f"  {service}: applied" in r.stdout, r.stdout
    services = gwlab.ctl("status")["services"]
    assert services["engine"]["steps"] > 0 and services["probes"]["completed"] > 0, services


def test_sigterm_is_fail_static_and_restore_on_exit_cleans_up(gwlab: GatewayLab) -> None:
    gwlab.start()
    gwlab.wait_class("critical", "fiber")
    routes, rules = gwlab.routes(), gwlab.rules()
    assert gwlab.kill(signal.SIGTERM) == 0
    assert gwlab.routes() == routes and gwlab.rules() == rules
    assert "failoverd" in gwlab.topo.sh("gw", "nft", "list", "tables").stdout
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "failoverd.cli",
            "purge",
            "--policy",
            str(gwlab.policy_path),
            "--netns",
            gwlab.topo.ns("gw"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[1]) >= len(routes) + len(rules)  # (the views here are IPv4 only)
    assert gwlab.routes() == [] and gwlab.rules() == []
    assert "failoverd" not in gwlab.topo.sh("gw", "nft", "list", "tables").stdout
    gwlab.start("--restore-on-exit")
    gwlab.wait_class("critical", "fiber")
    assert gwlab.kill(signal.SIGTERM) == 0
    assert gwlab.routes() == [] and gwlab.rules() == []
    assert "failoverd" not in gwlab.topo.sh("gw", "nft", "list", "tables").stdout


def test_unknown_and_malformed_commands_are_refused(gwlab: GatewayLab) -> None:
    gwlab.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(gwlab.socket)
        f = s.makefile("rwb")
        for raw, reason in (
            (b"not json\n", "not JSON"),
            (b'{"cmd": "reboot"}\n', "unknown command 'reboot'"),
            (b'{"cmd": "failover", "class": "critical"}\n', "missing to, reason"),
            (b'{"cmd": "drain", "uplink": 7, "reason": "x"}\n', "wrong type"),
            (b'{"cmd": "status", "verbose": true}\n', "unknown argument 'verbose'"),
            (b'{"cmd": "failover", "class": "critical", "to": "mobile", "reason": "  "}\n', "a reason is required"),
        ):
            f.write(raw)
            f.flush()
            reply = json.loads(f.readline())
            assert reply["ok"] is False and reason in reply["error"], (raw, reply)
    assert gwlab.ctl("status")["overrides"] == []


def test_probe_targets_unreachable_at_start_leave_classes_pending_then_decide(
    gwlab: GatewayLab, tmp_path: Path
) -> None:
    gwlab.carrier(False)
    gwlab.start()
    # fiber has no carrier at start: the classes go straight to mobile.
    gwlab.wait_class("critical", "mobile", timeout=5)


def test_systemd_notify_ready_and_watchdog(gwlab: GatewayLab, tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(10)
        gwlab.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
        got: list[str] = []
        while not any(m.startswith("WATCHDOG=1") for m in got):
            got.append(s.recv(4096).decode())
    assert any(m.startswith("READY=1") for m in got), got


def test_cold_satellite_is_activated_as_last_resort_and_released(gwlab: GatewayLab) -> None:
    gwlab.start()
    gwlab.wait_class("critical", "fiber")
    assert gwlab.uplink_state("sat") == "STANDBY"
    gwlab.start_traffic()
    time.sleep(0.3)
    gwlab.blackhole(True, "isp2")
    gwlab.carrier(False)
    # Only critical may use the metered satellite; bulk has nowhere to go.
    gwlab.wait_class("critical", "sat", timeout=10)
    assert gwlab.cls("bulk") == "unreachable"
    assert "state UP" in gwlab.topo.sh("gw", "ip", "link", "show", "dev", "sat0").stdout
    time.sleep(0.5)
    gwlab.carrier(True)
    gwlab.wait_class("critical", "fiber", timeout=10)
    # Released once no class has needed it for release_after (3 s): the activate command's opposite ran.
    wait_for(lambda: gwlab.uplink_state("sat") == "STANDBY", 10, what="satellite released")
    assert "state DOWN" in gwlab.topo.sh("gw", "ip", "link", "show", "dev", "sat0").stdout
    traffic = gwlab.stop_traffic()
    assert [s["to"] for s in traffic["switches"]] == [SAT_NAT, FIBER_NAT], traffic["switches"]
    standby = history(gwlab, "standby")
    # (Every start first switches off the cold uplinks no class is routed via: a crashed run may have left them on.)
    assert [(r["action"], r["cause"]["code"]) for r in standby] == [
        ("deactivate", "restart-release"),
        ("activate", "standby-needed"),
        ("deactivate", "standby-release"),
    ]
