"""The decision history: what changed, when (wall and monotonic), and why; kept in memory and on disk."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from failoverd.engine.records import effect_record

__all__ = ["Journal", "effect_record"]  # effect_record: where the runtime has always imported it from


class Journal:
    """Bounded history; appended to `history.jsonl` in the state dir so that it survives a restart."""

    def __init__(self, state_dir: Path | None, keep: int = 2000) -> None:
        self.path = state_dir / "history.jsonl" if state_dir else None
        self.keep = keep
        self.records: deque[dict[str, Any]] = deque(maxlen=keep)
        self.written = 0
        if self.path is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines()[-keep:]:
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash

    def add(self, record: dict[str, Any], mono: float) -> dict[str, Any]:
        record = {"wall": time.time(), "mono": round(mono, 6), **record}
        self.records.append(record)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=False) + "\n")
            self.written += 1
            if self.written >= self.keep:
                self._compact()
        return record

    def _compact(self) -> None:
        assert self.path is not None
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records), encoding="utf-8")
        tmp.replace(self.path)
        self.written = 0

    def last(self, n: int) -> list[dict[str, Any]]:
        return list(self.records)[-n:]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)
