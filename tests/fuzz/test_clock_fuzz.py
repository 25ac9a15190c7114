"""Time sources on random input: an SNTP reply or gpsd line is a sample or a clear rejection, never an exception."""

from __future__ import annotations

import asyncio
import json
import math
import struct
from datetime import UTC, datetime
from typing import Any

import pytest
from budget import examples
from hypothesis import example, given, settings
from hypothesis import strategies as st

from failoverd.clock.sntp import Reply, build_request, parse_reply, to_ntp
from failoverd.clock.sources import GPSD_LATENCY, GpsFix, gpsd_time, parse_tpv

WALL = 1_800_000_000.0
PACKET = struct.Struct("!BBbbIIIQQQQ")
_, XMT = build_request(WALL)


def reply(data: bytes) -> Reply:
    r = parse_reply("s", data, xmt=XMT, t1=WALL, t4=WALL + 0.02, mono=5.0)
    if r.ok:
        assert r.error == "" and 1 <= r.stratum <= 15 and r.leap != 3
        assert all(math.isfinite(v) for v in (r.offset, r.delay, r.root_distance)) and r.delay >= 0
        assert r.half_width >= 0
    else:
        assert r.error, r
    return r


def answer(**fields: int) -> bytes:
    """A server's answer to the request above, 2 s ahead, with `fields` changed."""
    f = {"lvm": 0x24, "stratum": 2, "poll": 6, "prec": -20, "rdelay": 0x100, "rdisp": 0x100, "refid": 0x7F000001}
    f |= {"ref": to_ntp(WALL + 1), "org": XMT, "rec": to_ntp(WALL + 2.01), "xmt": to_ntp(WALL + 2.011)}
    f.update(fields)
    return PACKET.pack(*f.values())


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"xmt": 0}, "bogus: zero timestamp"),  # was taken as a sample 126 years in the past
        ({"rec": 0}, "bogus: zero timestamp"),
        ({"stratum": 0, "refid": int.from_bytes(b"DENY", "big")}, "Kiss-o'-Death DENY"),
        ({"lvm": 0xE4}, "server unsynchronized"),
        ({"stratum": 16}, "server unsynchronized"),
        ({"lvm": 0x23}, "mode 3, not a server reply"),
        ({"org": XMT ^ 1}, "origin timestamp mismatch"),
    ],
)
def test_sntp_rejections(fields: dict[str, int], error: str) -> None:
    r = reply(answer(**fields))
    assert not r.ok and r.error.startswith(error), r


def test_a_good_sntp_answer_is_a_sample() -> None:
    r = reply(answer())
    assert r.ok and abs(r.offset - 2.0) < 1e-3


@settings(max_examples=examples(400))
@given(st.binary(max_size=100))
def test_random_sntp_packets(data: bytes) -> None:
    reply(data)


u32, u64 = st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)


@settings(max_examples=examples(250))
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "lvm": st.integers(0, 255),
            "stratum": st.integers(0, 255),
            "poll": st.integers(-128, 127),
            "prec": st.integers(-128, 127),
            "rdelay": u32,
            "rdisp": u32,
            "refid": u32,
            "ref": u64,
            "rec": u64 | st.just(0),
            "xmt": u64 | st.just(0),
        },
    ),
    st.binary(max_size=20),
)
def test_mutated_sntp_answers(fields: dict[str, int], tail: bytes) -> None:
    reply(answer(**fields) + tail)


# -- gpsd --------------------------------------------------------------------------------------------

NOW = datetime.fromtimestamp(WALL, UTC).isoformat().replace("+00:00", "Z")


def tpv(line: bytes) -> GpsFix | None:
    fix = parse_tpv(line, WALL, 7.0)
    if fix is not None:
        assert math.isfinite(fix.offset) and math.isfinite(fix.error) and fix.error >= GPSD_LATENCY, fix
        assert fix.mono == 7.0
    return fix


def test_a_tpv_report_is_a_sample() -> None:
    fix = tpv(json.dumps({"class": "TPV", "mode": 3, "time": NOW, "ept": 0.005}).encode())
    assert fix is not None and abs(fix.offset) < 1e-6 and fix.error == GPSD_LATENCY


@pytest.mark.parametrize(
    "report",
    [
        {"mode": "3"},  # TypeError: '<' between str and int
        {"mode": None},
        {"ept": "x"},
        {"ept": None},  # TypeError: float(None)
        {"ept": [1]},
        {"ept": float("nan")},  # a NaN error bar made every interval NaN
        {"ept": float("inf")},
        {"time": 1800000000},  # not a string
        {"time": "2027-01-15T08:00:00"},  # no zone: read as local time
        {"time": "yesterday"},
    ],
)
def test_tpv_reports_that_are_no_sample(report: dict[str, Any]) -> None:
    line = json.dumps({"class": "TPV", "mode": 3, "time": NOW, "ept": 0.005} | report).encode()
    assert tpv(line) is None


@pytest.mark.parametrize("line", [b"[1]", b'"TPV"', b"[" * 100_000, b"\xff", b"{"], ids=str)
def test_lines_that_are_not_a_report(line: bytes) -> None:
    assert tpv(line) is None


async def test_gpsd_time_skips_what_is_not_a_report() -> None:
    """Before, `[1]` raised AttributeError out of gpsd_time (and the clock check with it), a TPV with
    mode "3" a TypeError; a line that is not a report is now skipped and the next one read."""
    lines = [b"[1]", b'{"class": "TPV", "mode": "3", "time": "x"}', b'{"class": "TPV", "mode": 3, "ept": null}']
    lines.append(json.dumps({"class": "TPV", "mode": 3, "time": NOW, "ept": 0.5}).encode())

    async def feed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"\n".join(lines) + b"\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(feed, "127.0.0.1", 0)
    async with server:
        fix = await gpsd_time("127.0.0.1", server.sockets[0].getsockname()[1], timeout=2.0)
    assert fix is not None and fix.error == 0.5


json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(["TPV", NOW, "2027-01-15T08:00:00+14:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"]),
)
json_value = st.recursive(
    json_scalar, lambda v: st.lists(v, max_size=3) | st.dictionaries(st.text(max_size=5), v, max_size=3), max_leaves=8
)


@settings(max_examples=examples(200))
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "class": st.just("TPV") | json_value,
            "mode": st.integers(-1, 4) | json_value,
            "time": st.just(NOW) | json_value,
            "ept": st.floats() | json_value,
        },
    ),
    st.dictionaries(st.text(max_size=6), json_value, max_size=3),
)
@example({"class": "TPV", "mode": 3, "time": "0001-01-01T00:00:00Z"}, {})
def test_random_tpv_reports(report: dict[str, Any], extra: dict[str, Any]) -> None:
    tpv(json.dumps(extra | report).encode())


@settings(max_examples=examples(200))
@given(st.binary(max_size=120) | json_value.map(lambda v: json.dumps(v).encode()))
def test_random_gpsd_lines(line: bytes) -> None:
    tpv(line)
