"""The decision history: what changed, when (wall and monotonic), and why; kept in memory and on disk."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from failoverd.engine.records import stamped
from failoverd.statedir import StateDir


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
        record = stamped(record, time.time(), mono)
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
