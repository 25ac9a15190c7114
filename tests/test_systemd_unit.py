"""The shipped systemd unit runs commands the CLI really accepts."""

from __future__ import annotations

import shlex
from pathlib import Path

from failoverd.cli import build_parser

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "failoverd.service"


def _lines(key: str) -> list[str]:
    return [ln.split("=", 1)[1] for ln in UNIT.read_text().splitlines() if ln.startswith(f"{key}=")]


def test_unit_commands_parse() -> None:
    for key in ("ExecStart", "ExecStartPre"):
        (line,) = _lines(key)
        argv = shlex.split(line)
        assert argv[0].endswith("/failoverd")
        args = build_parser().parse_args(argv[1:])
        assert args.command in ("run", "check")


def test_unit_is_a_notify_service_with_a_watchdog() -> None:
    assert _lines("Type") == ["notify"]
    assert _lines("WatchdogSec")
    assert "CAP_NET_ADMIN" in _lines("CapabilityBoundingSet")[0]
