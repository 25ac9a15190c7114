"""The benchmark report: targets judged from the figures (met, missed, never), and the flap allowance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import report
from bench.failover import POLICIES, Sample, allowed_switches, summarize


def _fault(outages: list[float | None], lost: int = 10) -> dict[str, Any]:
    return summarize([Sample(o is not None, o, lost, o, 1 if o is not None else 0) for o in outages])


def _doc(fast: dict[str, Any], bfd: dict[str, Any]) -> dict[str, Any]:
    return {
        "meta": {
            "command": "python -m bench failover",
            "started": "t0",
            "host": {"kernel": "k", "python": "3", "cpus": 2},
        },
        "failover": {
            "runs": 3,
            "rate_pps": 1000.0,
            "faults": {"carrier": "", "dead": "", "beyond": ""},
            "peers": {"failoverd-fast": {"label": "f", "faults": fast}, "frr-bfd": {"label": "b", "faults": bfd}},
        },
    }


def test_targets_follow_the_figures() -> None:
    fast = {"carrier": _fault([5, 6, 7]), "dead": _fault([160, 170, 180]), "beyond": _fault([170, 180, 400])}
    bfd = {"carrier": _fault([70, 75, 80]), "dead": _fault([200, 210, 220]), "beyond": _fault([None, None, None])}
    got = {what: ok for what, _, ok in report.targets(_doc(fast, bfd))}
    assert got == {
        "carrier loss: outage ≤ 10 ms": True,
        "ISP router dead: failoverd-fast / FRR-BFD ≤ 1.0": True,
        "blackhole beyond the ISP: ≤ 300 ms": True,  # the median, 180 ms; the spread shows the 400
    }
    md = report.markdown(_doc(fast, bfd))
    assert "| **failoverd-fast / frr-bfd** | 0.08 | 0.81 | FRR-BFD never fails over |" in md
    assert "| frr-bfd | 75 (70–80) | 210 (200–220) | never |" in md


def test_a_slower_or_absent_failover_is_a_miss() -> None:
    fast = {"carrier": _fault([11, 12, 13]), "dead": _fault([230, 240, 250]), "beyond": _fault([None, None, None])}
    bfd = {"carrier": _fault([70, 75, 80]), "dead": _fault([200, 210, 220]), "beyond": _fault([None, None, None])}
    t = report.targets(_doc(fast, bfd))
    assert [ok for _, _, ok in t] == [False, False, False]
    assert t[2][1] == "never"


def test_the_fast_policy_allows_few_switches_in_a_flap_storm() -> None:
    # 30 falls in a minute: hold-down and damping must keep the class from following each one.
    n = allowed_switches(Path(POLICIES["failoverd-fast"]))
    assert 1 <= n <= 4


def test_the_ipv6_stream_is_a_column_beside_the_ipv4_one() -> None:
    fast = {"carrier": _fault([5, 6, 7]), "dead": _fault([160, 170, 180])}
    bfd = {"carrier": _fault([70, 75, 80]), "dead": _fault([200, 210, 220])}
    fast6 = {"carrier": _fault([6, 7, 8]), "dead": _fault([190, 200, 210])}
    bfd6 = {"carrier": _fault([72, 77, 82]), "dead": _fault([180, 190, 200])}
    doc = _doc(fast, bfd)
    doc["failover"]["faults"] = {"carrier": "", "dead": ""}
    doc["failover"]["peers"]["failoverd-fast"]["faults6"] = fast6
    doc["failover"]["peers"]["frr-bfd"]["faults6"] = bfd6
    md = report.markdown(doc)
    assert "| peer | carrier IPv4 | carrier IPv6 | dead IPv4 | dead IPv6 |" in md
    assert "| frr-bfd | 75 (70–80) | 77 (72–82) | 210 (200–220) | 190 (180–200) |" in md
    assert "| **failoverd-fast / frr-bfd** | 0.08 | 0.09 | 0.81 | 1.05 |" in md
    got = {what: ok for what, _, ok in report.targets(doc)}
    assert got["ISP router dead: failoverd-fast / FRR-BFD ≤ 1.0"] is True
    assert got["ISP router dead (IPv6): failoverd-fast / FRR-BFD ≤ 1.0"] is False  # a miss is reported
    assert got["carrier loss (IPv6): outage ≤ 10 ms"] is True
