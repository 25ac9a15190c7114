"""The fleet view: each site's conditions from its retained status, the summary, --where, and the CLI's rules."""

from __future__ import annotations

import json
from typing import Any

import pytest

from failoverd.control.fleetview import (
    CONDITIONS,
    EVERYTHING,
    Where,
    WhereError,
    read_status,
    row,
    summarise,
)
from failoverd.ctl import build_parser, main

NOW = 1_800_000_000.0


def status(**over: Any) -> bytes:
    doc: dict[str, Any] = {
        "online": True,
        "site": "x",
        "at": NOW - 10,
        "clock": "sane",
        "classes": {"dispatch": "via fiber", "bulk": "via fiber"},
        "uplinks": {"fiber": "UP", "mobile": "UP", "sat": "STANDBY"},
        "primary": {"dispatch": "fiber", "bulk": "fiber"},
        "kinds": {"fiber": "wired", "mobile": "cellular", "sat": "satellite"},
        "alarms": {},
    }
    doc.update(over)
    return json.dumps(doc).encode()


FLEET = {
    "north": status(),
    "south": status(classes={"dispatch": "via mobile", "bulk": "via mobile"}),
    "east": status(classes={"dispatch": "via sat", "bulk": "blackhole"}, alarms={"uplink-down:fiber": {}}),
    "west": status(clock="insane"),
    "gone": json.dumps({"online": False, "site": "gone", "at": NOW - 5, "why": "connection lost"}).encode(),
    "quiet": status(at=NOW - 600),
    "junk": b"own-0",
    "old": status(primary=None, kinds=None, classes={"dispatch": "via mobile"}),
}


def views() -> dict[str, Any]:
    return {site: read_status(site, doc, NOW) for site, doc in FLEET.items()}


def test_each_condition_is_read_from_the_retained_status_alone() -> None:
    v = views()
    assert v["north"].conditions == {"online"}
    assert v["south"].conditions == {"online", "backup"}
    assert v["east"].conditions == {"online", "backup", "satellite", "no-route"}
    assert v["west"].conditions == {"online", "bad-clock"}
    assert v["gone"].conditions == {"offline"} and v["gone"].why == "connection lost"
    # online but not refreshed for three minutes: its gateway, broker or bridge is cut off
    assert v["quiet"].conditions == {"stale"}
    assert v["junk"].conditions == {"unreadable"}
    # a status without primary/kinds (an older gateway) cannot say backup or satellite
    assert v["old"].conditions == {"online"}
    # a shorter stale limit, chosen by the operator
    assert read_status("north", FLEET["north"], NOW, stale_after=5).conditions == {"stale"}
    assert read_status("x", status(at="yesterday"), NOW).conditions == {"stale"}


def test_the_summary_counts_each_condition() -> None:
    s = summarise(views().values())
    assert s.sites == len(FLEET)
    assert dict(s.counts) == {
        "online": 5,
        "offline": 1,
        "stale": 1,
        "backup": 2,
        "satellite": 1,
        "no-route": 1,
        "bad-clock": 1,
        "unreadable": 1,
    }
    assert s.line().startswith("8 sites: 5 online, 1 offline, 1 stale; 2 on backup, 1 on satellite")
    assert set(s.counts) == set(CONDITIONS)


@pytest.mark.parametrize(
    ("where", "sites"),
    [
        ("", ["east", "gone", "junk", "north", "old", "quiet", "south", "west"]),
        ("class=dispatch,uplink=sat", ["east"]),
        ("class=bulk,uplink=sat", []),  # east's bulk is blackholed, its dispatch on the satellite
        ("uplink=mobile", ["old", "south"]),
        ("kind=satellite", ["east"]),
        ("class=dispatch,kind=cellular|satellite", ["east", "south"]),  # old says no kinds
        ("state=backup", ["east", "south"]),
        ("state=offline|stale", ["gone", "quiet"]),
        ("clock=bad", ["west"]),
        ("clock=sane,state=backup", ["east", "south"]),
        ("site=*th", ["north", "south"]),
        ("site=north|west, state=online", ["north", "west"]),
        ("alarm=uplink-down", ["east"]),
        ("class=nosuch", []),
    ],
)
def test_where_selects_sites(where: str, sites: list[str]) -> None:
    w = Where.parse(where)
    assert sorted(s for s, v in views().items() if w(v)) == sites


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ("class", "write KEY=VALUE"),
        ("colour=red", "no key 'colour'"),
        ("state=sleeping", "no state 'sleeping'"),
        ("uplink=a,uplink=b", "uplink given twice (alternatives go in one: uplink=a|b)"),
        ("site=", "write KEY=VALUE"),
    ],
)
def test_a_where_that_cannot_be_understood_names_its_part(where: str, error: str) -> None:
    with pytest.raises(WhereError, match=error.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")):
        Where.parse(where)


def test_a_row_says_where_the_classes_go_or_why_the_site_is_offline() -> None:
    v = views()
    assert row(v["east"]).split()[:5] == ["east", "online", "10s", "sane", "backup,satellite,no-route"]
    assert row(v["east"]).endswith("dispatch via sat, bulk blackhole")
    assert row(v["gone"]).endswith("connection lost") and " offline " in row(v["gone"])
    assert EVERYTHING(v["junk"])


def test_the_fleet_view_options_go_with_fleet_status_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--where", "state=offline", "status"]) == 1  # the local socket has one site
    assert "go with --mqtt BROKER --fleet status" in capsys.readouterr().err
    assert main(["--mqtt", "127.0.0.1:1", "--site", "a", "--where", "state=offline", "status"]) == 1
    assert "go with --fleet status" in capsys.readouterr().err
    assert main(["--mqtt", "127.0.0.1:1", "--fleet", "--live", "--summary", "status"]) == 1
    assert "go with --fleet status, --live with --fleet" in capsys.readouterr().err
    # a bad --where is refused before any broker is tried
    assert main(["--mqtt", "127.0.0.1:1", "--fleet", "--where", "colour=red", "status"]) == 1
    assert "no key 'colour'" in capsys.readouterr().err


def test_the_fleet_view_options_may_follow_the_command() -> None:
    after = build_parser().parse_args(["--fleet", "status", "--where", "state=offline", "--summary", "--live"])
    before = build_parser().parse_args(["--fleet", "--where", "state=offline", "--summary", "--live", "status"])
    for args in (after, before):
        assert (args.where, args.summary, args.live, args.stale) == ("state=offline", True, True, 180.0)
