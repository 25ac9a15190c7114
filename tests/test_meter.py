"""The meter service reads a metered uplink's real interface counters into the history when its use changes."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from failoverd.engine.state import initial_state
from failoverd.observe.journal import Journal
from failoverd.policy import parse_policy_text
from failoverd.services.history import History
from failoverd.services.meter import MeterService, concerns, counters
from failoverd.statedir import StateDir

# The loopback interface stands in for the terminal: its counters are real and this test can move them.
POLICY = parse_policy_text(
    """
site: m
uplinks:
  - {name: fiber, interface: fo-nonexistent0, next_hop: 192.0.2.1}
  - {name: sat, interface: lo, next_hop: 192.0.2.9, metered: true, admit: [vital]}
classes:
  - {name: vital, path: [fiber, sat]}
""",
    "meter.yaml",
)


class View:
    policy = POLICY
    state = initial_state(POLICY, 0.0)


def _send_some(n: int = 20) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(n):
            s.sendto(b"x" * 200, ("127.0.0.1", 9))  # discard port: nobody listens, lo counts it anyway


def test_counters_of_a_real_interface_and_none_for_a_missing_one() -> None:
    before = counters("lo")
    assert before is not None
    _send_some()
    after = counters("lo")
    assert after is not None and after[1] >= before[1] + 20 * 200
    assert counters("fo-nonexistent0") is None


def test_which_records_concern_a_metered_uplink() -> None:
    metered = {"sat"}
    assert concerns({"kind": "decision", "uplink": "sat", "from": "fiber"}, metered) == {"sat"}
    assert concerns({"kind": "decision", "uplink": None, "from": "sat", "route": "unreachable"}, metered) == {"sat"}
    assert concerns({"kind": "decision", "uplink": "fiber", "from": None}, metered) == set()
    assert concerns({"kind": "uplink", "uplink": "sat"}, metered) == {"sat"}
    assert concerns({"kind": "alarm", "subject": "sat"}, metered) == set()


def _sysfs(root: Path, rx: int, tx: int) -> None:
    stats = root / "lo" / "statistics"
    stats.mkdir(parents=True, exist_ok=True)
    (stats / "rx_bytes").write_text(f"{rx}\n")
    (stats / "tx_bytes").write_text(f"{tx}\n")


def test_a_reading_when_a_class_moves_onto_the_metered_uplink_and_only_when_counters_moved(tmp_path: Path) -> None:
    # Counters in sysfs's layout under tmp_path (the host's own lo moves with every other process's
    # traffic): the test decides when they move.
    root = tmp_path / "sys"
    _sysfs(root, 100, 200)
    history = History(Journal(StateDir.create(tmp_path / "state")))
    service = MeterService(View(), history, root=root)

    async def scenario() -> list[dict[str, object]]:
        task = asyncio.create_task(service.run())
        await asyncio.sleep(0.05)  # the start reading
        _sysfs(root, 5_100, 90_200)
        history.add({"kind": "decision", "class": "vital", "from": "fiber", "uplink": "sat"}, 1.0)
        await asyncio.sleep(0.05)
        history.add({"kind": "decision", "class": "vital", "from": "sat", "uplink": "fiber"}, 2.0)
        await asyncio.sleep(0.05)  # the counters did not move: no reading
        _sysfs(root, 6_000, 91_000)
        history.add({"kind": "alarm", "subject": "fiber"}, 3.0)  # not about sat: no reading
        await asyncio.sleep(0.05)
        history.add({"kind": "uplink", "uplink": "sat", "from": "UP", "to": "STANDBY"}, 4.0)
        await asyncio.sleep(0.05)
        task.cancel()
        return [r for r in history.last(100) if r["kind"] == "meter"]

    meters = asyncio.run(scenario())
    assert [(m["rx_bytes"], m["tx_bytes"]) for m in meters] == [(100, 200), (5_100, 90_200), (6_000, 91_000)]
    assert all(m["uplink"] == "sat" and m["interface"] == "lo" for m in meters)
