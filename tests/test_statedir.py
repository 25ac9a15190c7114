"""The state dir: atomic replace, tolerant reads, nothing written without a directory, and its users."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from failoverd import statedir
from failoverd.engine.state import Override
from failoverd.observe.journal import Journal
from failoverd.statedir import StateDir, load_overrides, save_overrides


class Unserialisable:
    pass


def test_replace_writes_the_document_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.replace("a.json", {"x": 1})
    state.replace("a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert state.read("a.json").document == {"x": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_the_old_file_survives_a_document_that_cannot_be_serialised(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.replace("a.json", {"x": 1})
    with pytest.raises(TypeError):
        state.replace("a.json", {"x": Unserialisable()})
    assert state.read("a.json").document == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_the_old_file_survives_a_failure_while_the_new_one_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fails after the new content is written but before it is safe: the old file stays whole."""
    state = StateDir(tmp_path)
    state.replace("a.json", {"x": 1})

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        state.replace("a.json", {"x": 2, "pad": "y" * 10_000})
    monkeypatch.undo()
    assert state.read("a.json").document == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_the_directory_is_flushed_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[bool] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(Path(f"/proc/self/fd/{fd}").is_dir())
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    StateDir(tmp_path).replace("a.json", [1])
    assert synced == [False, True]  # the file, then the directory holding the rename


def test_reads_say_when_a_file_is_corrupt_and_not_when_it_is_missing(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    assert state.read("missing.json") == statedir.Read(None, "")
    (tmp_path / "bad.json").write_text('{"x": ')
    got = state.read("bad.json")
    assert got.document is None
    assert "bad.json" in got.note and "unreadable" in got.note


def test_without_a_directory_nothing_is_written_and_nothing_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    state = StateDir(None)
    state.replace("a.json", {"x": 1})
    state.append("h.jsonl", ["{}"])
    assert state.read("a.json") == statedir.Read()
    assert state.lines("h.jsonl", 10) == []
    assert list(tmp_path.iterdir()) == []


def test_create_makes_the_directory(tmp_path: Path) -> None:
    StateDir.create(tmp_path / "a" / "b").replace("x.json", 1)
    assert (tmp_path / "a" / "b" / "x.json").exists()


def test_overrides_survive_a_restart_of_this_boot_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = StateDir(tmp_path)
    held = (Override("o1", "drain", None, "wan1", "maintenance", "test", 1.0, 99.0),)
    save_overrides(state, held, 7)
    assert load_overrides(state) == (held, 7, "")
    monkeypatch.setattr(statedir, "boot_id", lambda: "another boot")
    overrides, seq, note = load_overrides(state)
    assert (overrides, seq) == ((), 7)
    assert "before the last reboot" in note


def test_unreadable_overrides_are_ignored_and_said_so(tmp_path: Path) -> None:
    (tmp_path / "overrides.json").write_text("[1, 2")
    overrides, seq, note = load_overrides(StateDir(tmp_path))
    assert (overrides, seq) == ((), 0)
    assert "unreadable" in note
    (tmp_path / "overrides.json").write_text('{"override_seq": 3, "boot_id": "x", "overrides": [{"bogus": 1}]}')
    assert load_overrides(StateDir(tmp_path))[:2] == ((), 3)


def test_the_history_skips_a_torn_last_line_and_is_compacted_atomically(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    journal = Journal(state, keep=3)
    for i in range(2):
        journal.add({"kind": "x", "i": i}, float(i))
    with (tmp_path / "history.jsonl").open("a") as f:
        f.write('{"kind": "x", "i": ')  # a crash in the middle of a line
    reread = Journal(state, keep=3)
    assert [r["i"] for r in reread] == [0, 1]
    for i in range(2, 6):
        reread.add({"kind": "x", "i": i}, float(i))
    lines: list[dict[str, Any]] = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(lines) <= 4  # compacted: the last `keep`, plus what came after
    assert [r["i"] for r in Journal(state, keep=3)] == [3, 4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.jsonl"]


def test_a_journal_without_a_state_dir_keeps_history_in_memory(tmp_path: Path) -> None:
    journal = Journal(StateDir(None))
    journal.add({"kind": "x"}, 1.0)
    assert journal.last(5)[0]["kind"] == "x"


def test_proofs_survive_a_restart_and_a_reboot_by_the_wall_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from failoverd.engine.state import initial_uplink
    from failoverd.statedir import load_proofs, save_proofs

    state = StateDir(tmp_path)
    sat = replace(initial_uplink(True, 100.0), verified_at=400.0)
    never = initial_uplink(True, 100.0)
    monkeypatch.setattr(statedir, "boot_id", lambda: "boot 1")
    save_proofs(state, {"sat": sat, "lte": never}, mono=1000.0, wall=50_000.0)
    # The same boot: the monotonic instants hold as they are.
    got, note = load_proofs(state, mono=1200.0, wall=50_200.0)
    assert got == {"sat": (400.0, 100.0), "lte": (None, 100.0)}
    assert note == ""
    # After a reboot the monotonic clock starts again: the age comes from the wall clock.
    monkeypatch.setattr(statedir, "boot_id", lambda: "boot 2")
    got, note = load_proofs(state, mono=30.0, wall=51_000.0)
    assert got["sat"] == (30.0 - 1600.0, 30.0 - 1900.0)  # seen working 1600 s ago, watched for 1900 s
    # A wall clock behind the saved proof (not set yet at boot) proves nothing: dropped, said so.
    got, note = load_proofs(state, mono=30.0, wall=10.0)
    assert got["sat"] == (None, 30.0)
    assert "sat" in note
