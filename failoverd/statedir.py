"""The one owner of the state dir: every file in it is written here, atomically, and read back tolerantly."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from failoverd.engine.alarms import CARRY_FOR, ActiveAlarm, CarriedAlarm
from failoverd.engine.drillstate import Check, DrillPhase, DrillResult, DrillRun, DrillSchedule
from failoverd.engine.effects import Cause
from failoverd.engine.state import Override, UplinkState

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True, slots=True)
class Read:
    """A document read back: None when the file is missing or unreadable, and `note` says which."""

    document: Any = None
    note: str = ""  # empty when the file was read, or simply is not there


class StateDir:
    """Files that survive a restart (overrides, history, clock floor, MQTT counters, proofs, drills), in one directory.

    With no directory (`StateDir(None)`) nothing is written and every read finds nothing: a daemon run
    without --state-dir keeps its state in memory only.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path

    @classmethod
    def create(cls, path: Path | None) -> StateDir:
        """The state dir at `path`, made if missing (at start-up, before anything is read or written)."""
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    def __repr__(self) -> str:
        return f"StateDir({self.path})"

    def replace(self, name: str, document: Any) -> None:
        """Write `document` as JSON to `name`: a kill -9 (or a power cut) leaves the old file or the new one.

        Written to a temporary file, flushed to disk, renamed over the old one (atomic in one
        directory), then the directory itself flushed so that the rename is on disk too.
        """
        self.write_text(name, json.dumps(document, indent=1) + "\n")

    def remove(self, name: str) -> None:
        """Delete `name` if it is there."""
        if self.path is not None:
            (self.path / name).unlink(missing_ok=True)

    def write_text(self, name: str, text: str) -> None:
        """`replace` for text that is already serialised (the history's compaction)."""
        if self.path is None:
            return
        target = self.path / name
        tmp = self.path / f".{name}.tmp"
        try:
            with tmp.open("w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._sync_dir()

    def append(self, name: str, lines: Iterable[str]) -> None:
        """Append whole lines to `name` (the history: one line per record).

        Not fsynced per record: a decision must not wait for the flash, and a line cut short by a
        crash is skipped on read (see `lines`); compaction rewrites the file through `write_text`.
        """
        if self.path is None:
            return
        with (self.path / name).open("a", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)

    def read(self, name: str) -> Read:
        """The JSON document in `name`; a missing file is no news, an unreadable one is said so."""
        if self.path is None:
            return Read()
        path = self.path / name
        try:
            return Read(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return Read()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return Read(None, f"ignored unreadable {path}: {exc}")

    def lines(self, name: str, last: int) -> list[str]:
        """The last `last` lines of `name` (none when missing); a torn last line is the reader's to skip."""
        if self.path is None:
            return []
        try:
            text = (self.path / name).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return text.splitlines()[-last:]

    def _sync_dir(self) -> None:
        assert self.path is not None
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- operator overrides ---------------------------------------------------------------------------
OVERRIDES = "overrides.json"


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"


def save_overrides(state: StateDir, overrides: tuple[Override, ...], seq: int) -> None:
    state.replace(OVERRIDES, {"boot_id": boot_id(), "override_seq": seq, "overrides": [asdict(o) for o in overrides]})


def load_overrides(state: StateDir) -> tuple[tuple[Override, ...], int, str]:
    """Overrides saved by an earlier run of this boot, the override sequence, and a note for the log.

    Their expiries are on the monotonic clock: after a reboot they mean nothing, so they are dropped
    (and the note says so).
    """
    got = state.read(OVERRIDES)
    doc = got.document
    if not isinstance(doc, dict):
        return (), 0, got.note or ("" if doc is None else f"ignored {state.path}/{OVERRIDES}: not a JSON object")
    try:
        seq = int(doc.get("override_seq", 0))
        saved = doc.get("overrides", [])
        if doc.get("boot_id") != boot_id():
            return (), seq, f"dropped {len(saved)} override(s) saved before the last reboot"
        return tuple(Override(**o) for o in saved), seq, ""
    except (TypeError, ValueError) as exc:
        return (), 0, f"ignored unreadable {state.path}/{OVERRIDES}: {exc}"


# -- proofs that uplinks work (redundancy: verify.within) ----------------------------------------
PROOFS = "proofs.json"


def save_proofs(state: StateDir, uplinks: Mapping[str, UplinkState], mono: float, wall: float) -> None:
    """When each uplink was last seen working, and watched since, on both clocks: the monotonic
    instant holds within this boot; after a reboot only the wall clock can say how long ago it was."""

    def both(t: float | None) -> dict[str, float] | None:
        return None if t is None else {"mono": t, "wall": wall - (mono - t)}

    doc = {
        "boot_id": boot_id(),
        "uplinks": {n: {"verified": both(u.verified_at), "since": both(u.tracked_since)} for n, u in uplinks.items()},
    }
    state.replace(PROOFS, doc)


def load_proofs(state: StateDir, mono: float, wall: float) -> tuple[dict[str, tuple[float | None, float]], str]:
    """The saved proofs on this run's monotonic clock (uplink -> verified_at, tracked_since), and a note.

    Within one boot the monotonic instants are kept as they are. After a reboot the age comes from the
    wall clock; a saved instant in the wall clock's future (a clock set back, or not yet set at boot)
    proves nothing, so that proof is dropped and the uplink counts as never verified: the alarm may
    come early, never late.
    """
    got = state.read(PROOFS)
    doc = got.document
    if not isinstance(doc, dict) or not isinstance(doc.get("uplinks"), dict):
        return {}, got.note or ("" if doc is None else f"ignored {state.path}/{PROOFS}: not a proofs document")
    same_boot = doc.get("boot_id") == boot_id()
    out: dict[str, tuple[float | None, float]] = {}
    dropped: list[str] = []

    def restore(t: Any) -> float | None:
        if not isinstance(t, dict):
            return None
        if same_boot:
            return min(float(t["mono"]), mono)
        age = wall - float(t["wall"])
        return None if age < 0 else mono - age

    try:
        for name, entry in doc["uplinks"].items():
            verified = restore(entry.get("verified"))
            since = restore(entry.get("since"))
            if entry.get("verified") is not None and verified is None:
                dropped.append(name)
            out[str(name)] = (verified, mono if since is None else since)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return {}, f"ignored unreadable {state.path}/{PROOFS}: {exc}"
    note = f"dropped proofs of {', '.join(dropped)}: saved in the wall clock's future" if dropped else ""
    return out, note


# -- backup drills: the one running, and each drilled uplink's timetable and last result ----------
DRILLS = "drills.json"
# s: a saved instant this far in the wall clock's future (after a reboot) still counts as now: the
# clock read at save and the one read at start may differ by that much without anyone stepping it.
FUTURE_TOLERANCE = 1.0


def save_drills(
    state: StateDir, drill: DrillRun | None, schedules: Mapping[str, DrillSchedule], mono: float, wall: float
) -> None:
    """The drill in progress (so that the next start can end it and switch off what it switched on)
    and, per drilled uplink, when the next drill is due and how the last one went, on both clocks."""

    def both(t: float | None) -> dict[str, float] | None:
        return None if t is None else {"mono": t, "wall": wall - (mono - t)}

    def result(r: DrillResult | None) -> dict[str, Any] | None:
        if r is None:
            return None
        return {
            "verdict": r.verdict,
            "at": both(r.at),
            "cause": r.cause.as_dict(),
            "checks": [asdict(c) for c in r.checks],
        }

    running = None
    if drill is not None:
        running = {
            "uplink": drill.uplink,
            "phase": drill.phase.value,
            "by": drill.by,
            "activated": drill.activated,
            "started": both(drill.started),
            "verified_before": both(drill.verified_before),
        }
    doc = {
        "boot_id": boot_id(),
        "running": running,
        "uplinks": {
            name: {
                "due": both(s.due_at),
                "window": s.window,
                "window_done": s.window_done,
                "postponed": s.postponed,
                "verified": both(s.verified_at),
                "alarmed": s.alarmed,
                "last": result(s.last),
            }
            for name, s in schedules.items()
        },
    }
    state.replace(DRILLS, doc)


def load_drills(state: StateDir, mono: float, wall: float) -> tuple[DrillRun | None, dict[str, DrillSchedule], str]:
    """The saved drill state on this run's monotonic clock: the drill that was running (to be ended as
    aborted), each drilled uplink's timetable and last result, and a note for the log.

    As `load_proofs`: within one boot the monotonic instants hold; after a reboot they come from the
    wall clock, and a past instant the wall clock puts in its future (beyond FUTURE_TOLERANCE) is
    dropped (a result without its time, a proof never made). A due time is kept as the wall clock
    says; the engine caps it at one interval from now (engine/state.py: restored_state).
    """
    got = state.read(DRILLS)
    doc = got.document
    if not isinstance(doc, dict) or not isinstance(doc.get("uplinks"), dict):
        return None, {}, got.note or ("" if doc is None else f"ignored {state.path}/{DRILLS}: not a drills document")
    same_boot = doc.get("boot_id") == boot_id()
    dropped: list[str] = []

    def past(t: Any, name: str) -> float | None:
        if t is None:
            return None
        if same_boot:
            return min(float(t["mono"]), mono)
        age = wall - float(t["wall"])
        if age < -FUTURE_TOLERANCE:
            dropped.append(name)
            return None
        return mono - max(age, 0.0)

    def future(t: Any) -> float | None:
        if t is None:
            return None
        return float(t["mono"]) if same_boot else mono + (float(t["wall"]) - wall)

    def result(r: Any, name: str) -> DrillResult | None:
        if r is None:
            return None
        at = past(r["at"], name)
        if at is None:
            return None
        c = r["cause"]
        evidence = tuple((str(k), str(v)) for k, v in c.get("evidence", {}).items())
        checks = tuple(
            Check(str(k["name"]), None if k["value"] is None else float(k["value"]), str(k["unit"]), bool(k["ok"]))
            for k in r.get("checks", [])
        )
        verdict = r["verdict"]
        if verdict not in ("pass", "fail", "aborted", "production"):
            raise ValueError(f"unknown verdict {verdict!r}")
        return DrillResult(verdict, at, Cause(str(c["code"]), str(c["text"]), evidence), checks)

    def running(r: Any) -> DrillRun | None:
        if r is None:
            return None
        name = r["uplink"]
        if not isinstance(name, str):
            raise TypeError(f"running drill of {name!r}")
        phase = DrillPhase(r["phase"])
        if phase is DrillPhase.IDLE:
            raise ValueError("a running drill in phase idle")
        started = past(r["started"], name)
        return DrillRun(
            name,
            phase,
            mono if started is None else started,
            str(r["by"]),
            activated=bool(r["activated"]),
            verified_before=past(r.get("verified_before"), name),
        )

    try:
        schedules: dict[str, DrillSchedule] = {}
        for name, e in doc["uplinks"].items():
            window = e.get("window")
            schedules[str(name)] = DrillSchedule(
                due_at=future(e.get("due")),
                window=None if window is None else float(window),
                window_done=bool(e.get("window_done", False)),
                postponed=None if e.get("postponed") is None else str(e["postponed"]),
                last=result(e.get("last"), str(name)),
                verified_at=past(e.get("verified"), str(name)),
                alarmed=bool(e.get("alarmed", False)),
            )
        run = running(doc.get("running"))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return None, {}, f"ignored unreadable {state.path}/{DRILLS}: {exc}"
    names = ", ".join(dict.fromkeys(dropped))
    note = f"dropped drill times of {names}: saved in the wall clock's future" if dropped else ""
    return run, schedules, note


# -- alarms active when the daemon stops (engine/alarms.py: CarriedAlarm) -------------------------
ALARMS = "alarms.json"


def save_alarms(state: StateDir, alarms: Mapping[str, ActiveAlarm], mono: float, wall: float) -> None:
    """The active alarms, with when they were raised (both clocks) and who acknowledged them."""
    doc = {
        "boot_id": boot_id(),
        "alarms": {
            a.id: {
                "raised": {"mono": a.raised, "wall": wall - (mono - a.raised)},
                "acked_by": a.acked_by,
                "ack_reason": a.ack_reason,
            }
            for a in alarms.values()
        },
    }
    state.replace(ALARMS, doc)


def load_alarms(state: StateDir, mono: float, wall: float) -> tuple[dict[str, CarriedAlarm], str]:
    """The alarms active when the last run ended, on this run's clock, to resume if seen again."""
    got = state.read(ALARMS)
    doc = got.document
    if not isinstance(doc, dict) or not isinstance(doc.get("alarms"), dict):
        return {}, got.note or ("" if doc is None else f"ignored {state.path}/{ALARMS}: not an alarms document")
    same_boot = doc.get("boot_id") == boot_id()
    out: dict[str, CarriedAlarm] = {}
    try:
        for aid, entry in doc["alarms"].items():
            raised = entry["raised"]
            # Within a boot the monotonic instant; after a reboot the age from the wall clock (a time
            # in its future counts from now).
            age = max(0.0, wall - float(raised["wall"]))
            at = min(float(raised["mono"]), mono) if same_boot else mono - age
            by, why = entry.get("acked_by"), entry.get("ack_reason")
            out[str(aid)] = CarriedAlarm(
                at, mono + CARRY_FOR, None if by is None else str(by), None if why is None else str(why)
            )
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return {}, f"ignored unreadable {state.path}/{ALARMS}: {exc}"
    return out, ""
