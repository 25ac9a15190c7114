"""What a flood on the command topics may cost: a bounded backlog, token buckets, refusals summarised per interval."""

from __future__ import annotations

import re
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

# Theory of operation. The MQTT session shares the daemon's one event loop with the probes and the engine,
# so the command topics (which anyone who can publish on the broker can fill) must not be able to buy
# more of that loop than routing can spare. The costs of a request, cheapest first, are: taking it off the
# wire, parsing and verifying it, then a log line, a history record and a reply (a publish that waits
# for the broker's acknowledgement). The first are paid for every request taken (`python -m bench intake`:
# an Ed25519 check of a forged signature under a real key's name, median 0.18 ms on the 2-CPU test VM,
# as much as a valid one; malformed, unsigned and unknown-key requests about 6 µs), and the loop stays
# fair while they are: paho reads a packet or a few per wake-up (as many as it has QoS exchanges in
# flight) and the handler yields after each request, so probes and carrier events wait behind one
# request at most. The last three are what a flood must not get one of per request:
#
# - a backlog of BACKLOG requests between the broker and the handler; when full, the oldest goes
#   (`Backlog`). A request that waited longest is the one its sender has most likely given up on (failoverctl
#   waits seconds for its reply) and the nearest to `max_age`; the newest is the one an operator is waiting
#   for now. Drops are counted and reported in the summary;
# - refusals: the first IN_FULL of each SUMMARY_EVERY interval are logged and kept in the history as
#   themselves; the rest are counted (per reason, per claimed key) and written as one log line and one
#   history record when the interval ends (`Intake.summary`);
# - replies to refusals: requests that fail before their sender is known (malformed, unsigned, unknown
#   key, bad signature) share one bucket, REFUSAL_REPLIES, whatever key they claim: a claimed name proves
#   nothing, so charging it to that key would let a forger silence the real key's replies. Refusals of a
#   verified sender (a replay, too old, over its rate) draw on that key's own NOTICES bucket, so an
#   operator is told why even while garbage floods the topic;
# - commands: each verified key may run COMMANDS, so that one key, stolen or in a buggy loop, cannot
#   monopolise the gateway (each accepted command also costs a state-file write). A command over the
#   rate is refused, and the reply says so and when to try again.
#
# Nothing here knows the signature scheme: callers pass the claimed key name and whether the sender was
# verified. Nothing reads a clock: `now` is a monotonic time in seconds, passed in.

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Rate:
    per_s: float  # tokens added per second
    burst: float  # the most that can be saved up


BACKLOG = 256  # requests waiting to be handled. Refusing one costs at most a signature check (see above),
# so this is about a tenth of a second of work; it bounds memory at 256 x MAX_REQUEST (16 MiB) at worst,
# with the client's own queue bounded to the same (control/mqtt.py).
SUMMARY_EVERY = 10.0  # s: one log line and one history record per interval for the refusals not shown in full
IN_FULL = 5  # refusals per interval shown as themselves: a wrong key or a replay is seen exactly; a flood is not
REFUSAL_REPLIES = Rate(5.0, 20.0)  # replies to senders not verified: enough for a person at a console
NOTICES = Rate(1.0, 5.0)  # per verified key: replies saying why its command was refused (replay, rate...)
COMMANDS = Rate(1.0, 10.0)  # per verified key: failoverctl sends one command per run; a script stepping
# through a fleet's classes fits in the burst, a loop gone wrong is held to one per second
SUMMARY_ENTRIES = 16  # distinct reasons and keys kept per summary; beyond, "(other)": claimed names are free


class TokenBucket:
    """`take` succeeds while tokens are left; they come back at `rate.per_s`, up to `rate.burst`."""

    __slots__ = ("rate", "stamp", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = rate.burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.rate.burst, self.tokens + (now - self.stamp) * self.rate.per_s)
        self.stamp = max(self.stamp, now)  # a clock read out of order adds nothing

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait(self, now: float) -> float:
        """Seconds until one token is there (0 if one is)."""
        self._refill(now)
        return max(0.0, (1.0 - self.tokens) / self.rate.per_s) if self.rate.per_s > 0 else float("inf")


class Backlog(Generic[T]):
    """A bounded FIFO: when full, a new item pushes the oldest out, and the drop is counted."""

    def __init__(self, size: int = BACKLOG) -> None:
        self.items: deque[T] = deque(maxlen=size)
        self.dropped = 0

    def push(self, item: T) -> T | None:
        """Queue `item`; returns the item dropped to make room, if any."""
        dropped = self.items[0] if len(self.items) == self.items.maxlen else None
        if dropped is not None:
            self.dropped += 1
        self.items.append(item)
        return dropped

    def pop(self) -> T | None:
        return self.items.popleft() if self.items else None

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class Treatment:
    """What a refusal gets."""

    in_full: bool  # logged and kept in the history as itself (else only counted for the summary)
    reply: bool  # a reply is published


_NUMBER = re.compile(r"-?\d+(\.\d+)?(e-?\d+)?")


def reason_kind(reason: str) -> str:
    """The reason without its particulars, to count alike refusals together: 'not JSON: Expecting value:
    line 1 column 1 (char 0)' -> 'not JSON'; 'too old: issued 99s ago' -> 'too old'; quoted names and
    numbers dropped ('unknown key "x"' -> 'unknown key')."""
    head = reason.split(":", 1)[0]
    head = _NUMBER.sub("N", re.sub(r'\s*"[^"]*"', "", head))
    return " ".join(head.split())[:80] or "?"


def _clip(name: str | None) -> str:
    return "(none)" if name is None else name[:64]


class Intake:
    """The budgets of one gateway's command topics, and the refusals of the current interval."""

    def __init__(self, now: float, backlog: int = BACKLOG) -> None:
        self.backlog: Backlog[Any] = Backlog(backlog)
        self.replies = TokenBucket(REFUSAL_REPLIES, now)
        self.commands: dict[str, TokenBucket] = {}
        self.notices: dict[str, TokenBucket] = {}
        self.since = now  # the current interval's start
        self.shown = 0  # refusals shown in full this interval
        self.reasons: Counter[str] = Counter()  # refusals only counted, this interval
        self.keys: Counter[str] = Counter()
        self.unanswered = 0
        self.dropped_reported = 0

    # -- verified commands ----------------------------------------------------------------------------
    def admit(self, key: str, now: float) -> float:
        """A verified command under `key`: 0 if it may run, else the seconds until one may.

        `key` must be a name the gateway verified: buckets are kept per key, and only the keys file bounds them."""
        bucket = self.commands.setdefault(key, TokenBucket(COMMANDS, now))
        return 0.0 if bucket.take(now) else max(bucket.wait(now), 0.001)

    # -- refusals -------------------------------------------------------------------------------------
    def refused(self, now: float, reason: str, key: str | None, *, verified: bool) -> Treatment:
        """A refusal: how much of a log line, a history record and a reply it gets. `key` is the claimed
        name; `verified`: the signature under that key held (the refusal is a replay, too old, over the rate)."""
        if verified and key is not None:
            reply = self.notices.setdefault(key, TokenBucket(NOTICES, now)).take(now)
        else:
            reply = self.replies.take(now)
        if not reply:
            self.unanswered += 1
        if self.shown < IN_FULL:
            self.shown += 1
            return Treatment(in_full=True, reply=reply)
        _count(self.reasons, reason_kind(reason))
        _count(self.keys, _clip(key))
        return Treatment(in_full=False, reply=reply)

    def due(self, now: float) -> float:
        """Seconds until the current interval ends (when `summary` has something to say)."""
        return max(0.0, self.since + SUMMARY_EVERY - now)

    def summary(self, now: float) -> dict[str, Any] | None:
        """At the end of an interval: what was only counted in it (a history record), or None if nothing was.
        Starts the next interval."""
        if now < self.since + SUMMARY_EVERY:
            return None
        dropped = self.backlog.dropped - self.dropped_reported
        out: dict[str, Any] | None = None
        if self.reasons or dropped or self.unanswered:
            out = {
                "kind": "remote-refused-summary",
                "interval_s": round(now - self.since, 1),
                "refused": self.shown + sum(self.reasons.values()),
                "in_full": self.shown,
                "by_reason": dict(self.reasons.most_common()),
                "by_key": dict(self.keys.most_common()),
                "unanswered": self.unanswered,
                "dropped": dropped,  # taken off the wire but pushed out of the backlog unread
            }
        self.since = now
        self.shown = self.unanswered = 0
        self.reasons.clear()
        self.keys.clear()
        self.dropped_reported = self.backlog.dropped
        return out


def _count(counter: Counter[str], name: str) -> None:
    if name in counter or len(counter) < SUMMARY_ENTRIES:
        counter[name] += 1
    else:
        counter["(other)"] += 1
