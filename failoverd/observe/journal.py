"""The decision history: what changed, when (wall and monotonic), and why; kept in memory and on disk."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from failoverd.engine import effects as fx
from failoverd.statedir import StateDir


def effect_record(e: fx.Effect) -> dict[str, Any] | None:
    """The journal's view of an effect; None for effects that are not history."""
    match e:
        case fx.SwitchClass():
            return {
                "kind": "decision",
                "class": e.cls,
                "from": e.from_uplink,
                "uplink": e.to_uplink,
                "route": e.route,
                "cause": e.cause.as_dict(),
            }
        case fx.UplinkChanged():
            return {"kind": "uplink", "uplink": e.uplink, "from": e.old, "to": e.new, "cause": e.cause.as_dict()}
        case fx.Alarm():
            return {"kind": "alarm", "severity": e.severity, "subject": e.subject, "cause": e.cause.as_dict()}
        case fx.CommandReply():
            return {"kind": "command", "request": e.request, "ok": e.ok, "text": e.text, "changes": list(e.changes)}
        case fx.ClockReaction():
            return {
                "kind": "clock",
                "from": e.old,
                "to": e.new,
                "distrust": sorted(e.distrust),
                "cause": e.cause.as_dict(),
            }
        case fx.FlushConntrack():
            return {"kind": "conntrack", "class": e.cls, "uplink": e.uplink}
        case fx.ActivateStandby() | fx.DeactivateStandby():
            action = "activate" if isinstance(e, fx.ActivateStandby) else "deactivate"
            return {"kind": "standby", "uplink": e.uplink, "action": action, "cause": e.cause.as_dict()}
        case fx.WithdrawClass():
            return {
                "kind": "decision",
                "class": e.cls,
                "uplink": None,
                "route": "withdrawn",
                "cause": e.cause.as_dict(),
            }
    return None


class Journal:
    """Bounded history; appended to `history.jsonl` in the state dir so that it survives a restart.

    One line per record, appended rather than the file rewritten per record: a decision must not wait
    for a rewrite of 2000 records. A line cut short by a crash is skipped on read, and every `keep`
    records the file is compacted to the last `keep` through the state dir's atomic replace.
    """

    FILE = "history.jsonl"

    def __init__(self, state: StateDir, keep: int = 2000) -> None:
        self.state = state
        self.keep = keep
        self.records: deque[dict[str, Any]] = deque(maxlen=keep)
        self.written = 0
        torn = False
        for line in self.state.lines(self.FILE, keep):
            try:
                self.records.append(json.loads(line))
            except json.JSONDecodeError:
                torn = True  # a line cut short by a crash
        if torn:
            self._compact()  # else the next record would be appended to the torn line, and lost with it

    def add(self, record: dict[str, Any], mono: float) -> dict[str, Any]:
        record = {"wall": time.time(), "mono": round(mono, 6), **record}
        self.records.append(record)
        if self.state.path is not None:
            self.state.append(self.FILE, [json.dumps(record, sort_keys=False)])
            self.written += 1
            if self.written >= self.keep:
                self._compact()
        return record

    def _compact(self) -> None:
        self.state.write_text(self.FILE, "".join(json.dumps(r) + "\n" for r in self.records))
        self.written = 0

    def last(self, n: int) -> list[dict[str, Any]]:
        return list(self.records)[-n:]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)
