"""The history: each record goes to the journal and to every subscriber's feed (MQTT events)."""

from __future__ import annotations

from typing import Any

from failoverd.control.api import Feed
from failoverd.observe.journal import Journal


class History:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.feeds: list[Feed] = []

    def add(self, record: dict[str, Any], mono: float) -> dict[str, Any]:
        record = self.journal.add(record, mono)
        for feed in self.feeds:
            feed.put(record)
        return record

    def last(self, n: int) -> list[dict[str, Any]]:
        return self.journal.last(n)

    def subscribe(self, keep: int) -> Feed:
        feed = Feed(keep)
        self.feeds.append(feed)
        return feed
