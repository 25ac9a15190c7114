"""A flood on the command topics: the backlog's drop policy, the token buckets, refusals summarised per interval."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import keys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from failoverd.control import intake
from failoverd.control.engineonly import EngineGateway
from failoverd.control.intake import Backlog, Intake, Rate, TokenBucket, reason_kind
from failoverd.control.mqtt import Fleet
from failoverd.control.signing import load_private_key, sign, site_dest
from failoverd.statedir import StateDir


# All key creation and signing goes through these two: the signature scheme changes in one place.
def operator_keys(tmp: Path, name: str = "noc") -> tuple[Path, Ed25519PrivateKey]:
    """A gateway's keys file holding `name`, and what the operator signs with."""
    private, keys_file = keys.operator_keys(tmp / "command-keys", name)
    return keys_file, load_private_key(private)


def signed(request: dict[str, Any], key: str, private: Ed25519PrivateKey, issued: float) -> bytes:
    """Signed for the test's site, `north`, on its own topic."""
    return json.dumps(sign(request, key, private, issued, site_dest("failoverd", "north"))).encode()


def test_a_bucket_spends_its_burst_then_refills_at_its_rate() -> None:
    b = TokenBucket(Rate(2.0, 3.0), now=100.0)
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert b.wait(100.0) == 0.5
    assert not b.take(100.4) and b.take(100.5)
    assert b.take(110.0) and b.tokens == 2.0  # refilled up to the burst, not beyond
    early = TokenBucket(Rate(1.0, 1.0), 5.0)
    assert early.take(5.0) and not early.take(
        3.0
    )  # a time before its stamp adds nothing and not early.take(5.5) and early.take(6.0)


def test_a_full_backlog_drops_its_oldest_and_counts() -> None:
    q: Backlog[int] = Backlog(3)
    assert [q.push(i) for i in range(5)] == [None, None, None, 0, 1]
    assert q.dropped == 2 and len(q) == 3
    assert [q.pop(), q.pop(), q.pop(), q.pop()] == [2, 3, 4, None]


def test_reasons_are_counted_without_their_particulars() -> None:
    assert reason_kind("not JSON: Expecting value: line 1 column 1 (char 0)") == "not JSON"
    assert reason_kind('unknown key "mallory"') == "unknown key"
    assert reason_kind("too old: issued 99s ago (max_age 60s)") == "too old"
    assert reason_kind("issued 5s in the future (max_age 60s)") == "issued Ns in the future (max_age Ns)"
    assert reason_kind("") == "?"


def test_refusals_beyond_the_first_of_an_interval_are_summarised_once() -> None:
    i = Intake(now=0.0)
    seen = [i.refused(1.0, f'unknown key "k{n}"', f"k{n % 2}", verified=False) for n in range(1000)]
    assert [s.in_full for s in seen].count(True) == intake.IN_FULL
    replies = [s.reply for s in seen].count(True)
    assert replies == intake.REFUSAL_REPLIES.burst  # all within one second: the burst, no more
    assert i.summary(5.0) is None  # the interval is not over
    assert i.due(5.0) == intake.SUMMARY_EVERY - 5.0
    s = i.summary(10.0)
    assert s is not None and s["kind"] == "remote-refused-summary"
    assert s["refused"] == 1000 and s["in_full"] == intake.IN_FULL
    assert s["by_reason"] == {"unknown key": 1000 - intake.IN_FULL}
    assert s["by_key"] == {"k0": 497, "k1": 498} and s["unanswered"] == 1000 - replies
    # The next interval starts afresh; a quiet one leaves no record.
    assert i.refused(11.0, "unsigned: a remote command needs key, issued and sig", None, verified=False).in_full
    assert i.summary(20.0) is None and i.summary(30.0) is None


def test_claimed_names_cannot_grow_a_summary_without_bound() -> None:
    i = Intake(now=0.0)
    for n in range(intake.IN_FULL + 1000):
        i.refused(1.0, f'bad signature for key "{n}"', f"forged-{n}" + "x" * 500, verified=False)
    s = i.summary(10.0)
    assert s is not None and len(s["by_key"]) == intake.SUMMARY_ENTRIES + 1
    assert s["by_key"]["(other)"] == 1000 - intake.SUMMARY_ENTRIES
    assert max(len(k) for k in s["by_key"]) <= 64


def test_garbage_cannot_use_up_a_verified_keys_replies() -> None:
    i = Intake(now=0.0)
    for _ in range(500):
        i.refused(1.0, 'bad signature for key "noc"', "noc", verified=False)  # anyone can claim "noc"
    assert not i.refused(1.0, "not JSON", None, verified=False).reply
    assert i.refused(1.0, "replayed or out of order", "noc", verified=True).reply  # noc's own notices


def test_each_verified_key_has_its_own_command_rate() -> None:
    i = Intake(now=0.0)
    burst = int(intake.COMMANDS.burst)
    assert [i.admit("stolen", 1.0) for _ in range(burst)] == [0.0] * burst
    wait = i.admit("stolen", 1.0)
    assert wait == 1.0 / intake.COMMANDS.per_s
    assert i.admit("noc", 1.0) == 0.0  # another key is not held back by the first
    assert i.admit("stolen", 1.0 + wait) == 0.0


def test_the_backlog_drops_are_reported_in_the_summary() -> None:
    i = Intake(now=0.0, backlog=2)
    for n in range(10):
        i.backlog.push(n)
    s = i.summary(10.0)
    assert s is not None and s["dropped"] == 8 and s["refused"] == 0
    i.backlog.pop()
    i.backlog.push(10)
    assert i.summary(20.0) is None  # already reported: not again


def fleet(tmp: Path) -> tuple[Fleet, EngineGateway, Ed25519PrivateKey]:
    keys_file, secret = operator_keys(tmp)
    d = EngineGateway(
        "site: north\nuplinks: [{name: a, interface: eth0, next_hop: 198.18.0.1}]\nclasses: [{name: all, path: [a]}]\n"
        f"control: {{mqtt: {{enabled: true, keys_file: {keys_file}}}}}\n"
    )
    return Fleet(d, d.policy.control.mqtt, StateDir(tmp)), d, secret


async def test_a_flood_of_refusals_costs_a_few_records_and_replies(tmp_path: Path) -> None:
    f, d, _ = fleet(tmp_path)
    payloads = [
        b"{not json",
        b'{"cmd": "release"}',
        signed({"cmd": "release"}, "mallory", Ed25519PrivateKey.generate(), time.time()),
    ]
    replies = [await f.handle(f.cmd_topic, payloads[n % 3]) for n in range(3000)]
    assert len(d.records) == intake.IN_FULL  # not 3000 history records (on flash)
    assert sum(r is not None for r in replies) == intake.REFUSAL_REPLIES.burst
    f.intake.since -= intake.SUMMARY_EVERY
    f._summarise()
    summary = d.records[-1]
    assert summary["kind"] == "remote-refused-summary" and summary["refused"] == 3000, summary
    assert set(summary["by_reason"]) == {"not JSON", "unsigned", "unknown key"}


async def test_a_key_over_its_rate_is_told_so_and_its_command_never_runs_later(tmp_path: Path) -> None:
    f, _, secret = fleet(tmp_path)
    base = time.time()
    requests = [
        signed({"cmd": "explain", "class": "all", "id": f"r{n}"}, "noc", secret, base + n / 1000) for n in range(12)
    ]
    replies = [await f.handle(f.cmd_topic, r) for r in requests]
    assert all(r is not None for r in replies)
    ok = [r["ok"] for r in replies if r is not None]
    assert ok == [True] * int(intake.COMMANDS.burst) + [False] * (12 - int(intake.COMMANDS.burst))
    limited = replies[-1]
    assert limited is not None and limited["error"].startswith('rate limited: key "noc"'), limited
    assert "try again in" in limited["error"]
    f.intake.commands["noc"].tokens = intake.COMMANDS.burst  # later, with tokens again:
    again = await f.handle(f.cmd_topic, requests[-1])
    assert again is not None and "replayed" in again["error"]  # refused then, so never run


async def test_a_request_that_breaks_the_handler_does_not_end_the_session(tmp_path: Path) -> None:
    f, _, _ = fleet(tmp_path)

    async def broken(topic: str, payload: Any) -> dict[str, Any] | None:
        raise RuntimeError("a bug")

    class Message:
        topic, payload = f.cmd_topic, b"{}"

    f.handle = broken  # type: ignore[method-assign]
    for _ in range(100):
        await f._command(None, Message())  # type: ignore[arg-type]
    f.intake.since -= intake.SUMMARY_EVERY
    assert (f.intake.summary(time.monotonic()) or {})["by_reason"] == {"internal error": 100 - intake.IN_FULL}
