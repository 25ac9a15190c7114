"""Probes: one module per kind; each sends one probe out of its uplink (SO_MARK) and times the answer."""

from __future__ import annotations

from failoverd.probes.base import ProbeOutcome, Session, open_session

__all__ = ["ProbeOutcome", "Session", "open_session"]
