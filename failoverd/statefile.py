"""What survives a restart of the daemon: operator overrides, with their expiry on the monotonic clock."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from failoverd.engine.state import Override

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"


def save_overrides(state_dir: Path, overrides: tuple[Override, ...], seq: int) -> None:
    """Atomically (write, fsync, rename): a kill -9 leaves the old file or the new, never half of one."""
    doc = {"boot_id": boot_id(), "override_seq": seq, "overrides": [asdict(o) for o in overrides]}
    tmp = state_dir / "overrides.json.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(state_dir / "overrides.json")


def load_overrides(state_dir: Path) -> tuple[tuple[Override, ...], int, str]:
    """Overrides saved by an earlier run of this boot; after a reboot their monotonic expiries mean
    nothing, so they are dropped (and the note says so)."""
    path = state_dir / "overrides.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return (), 0, ""
    except (OSError, json.JSONDecodeError) as exc:
        return (), 0, f"ignored unreadable {path}: {exc}"
    seq = int(doc.get("override_seq", 0))
    if doc.get("boot_id") != boot_id():
        return (), seq, f"dropped {len(doc.get('overrides', []))} override(s) saved before the last reboot"
    return tuple(Override(**o) for o in doc.get("overrides", [])), seq, ""
