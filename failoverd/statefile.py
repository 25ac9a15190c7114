"""Overrides across a restart, for the runtime before it held a StateDir: delete with that runtime (see statedir.py)."""

from __future__ import annotations

from pathlib import Path

from failoverd import statedir
from failoverd.engine.state import Override
from failoverd.statedir import StateDir


def save_overrides(state_dir: Path, overrides: tuple[Override, ...], seq: int) -> None:
    statedir.save_overrides(StateDir(state_dir), overrides, seq)


def load_overrides(state_dir: Path) -> tuple[tuple[Override, ...], int, str]:
    return statedir.load_overrides(StateDir(state_dir))
