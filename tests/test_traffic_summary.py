"""The lab receiver's arithmetic: gaps, losses, reordering and path switches of a stream."""

from __future__ import annotations

from lab.traffic import Receiver


def test_summary_of_a_stream_that_switches_path() -> None:
    r = Receiver()
    t = 100.0
    for seq in range(10):  # 1 ms apart via A
        r.arrivals.append((t + seq * 0.001, seq, "A", 0.0))
    # seq 10-14 lost in the switch; 50 ms of silence; then B
    for seq in range(15, 20):
        r.arrivals.append((t + 0.059 + (seq - 15) * 0.001, seq, "B", 0.0))
    r.arrivals.append((t + 0.070, 12, "A", 0.0))  # a late packet from the old path
    r.arrivals.append((t + 0.071, 19, "B", 0.0))  # a duplicate
    s = r.summary()
    assert s["received"] == 16
    assert s["lost"] == 4  # 10, 11, 13, 14 (12 came late)
    assert s["duplicates"] == 1 and s["reordered"] == 1
    assert s["max_gap_ms"] == 50.0
    assert [(x["from"], x["to"]) for x in s["switches"]] == [("A", "B")]
    assert s["by_source"] == {"A": 11, "B": 5}


def test_empty_stream() -> None:
    assert Receiver().summary()["received"] == 0
