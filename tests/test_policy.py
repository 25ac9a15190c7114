"""Policy files: every example passes; every broken file yields the located errors it announces."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import get_args, get_type_hints

import pytest

from failoverd.cli import unreadable
from failoverd.errors import PolicyError
from failoverd.policy import load_policy, model, parse_policy_text, schema

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "policies").glob("*.yaml")) + sorted((ROOT / "tests" / "golden" / "policies").glob("*.yaml"))
BROKEN = sorted((ROOT / "tests" / "broken").glob("*.yaml"))


def test_there_are_examples_and_broken_files() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"branch.yaml", "emergency.yaml", "lab.yaml"} <= names
    assert len(BROKEN) >= 12


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_policy_is_valid(path: Path) -> None:
    policy = load_policy(path)
    assert policy.uplinks and policy.classes
    tables = [u.table for u in policy.uplinks.values()] + [c.table for c in policy.classes.values()]
    marks = [u.fwmark for u in policy.uplinks.values()] + [c.fwmark for c in policy.classes.values()]
    assert len(set(tables)) == len(tables)
    assert len(set(marks)) == len(marks)
    lo, hi = policy.ownership.tables
    assert all(lo <= t <= hi for t in tables)
    assert all(m & ~policy.ownership.fwmark_mask == 0 for m in marks)


def test_branch_policy_is_short() -> None:
    """The issue's promise: a two-uplink branch office fits in about 15 lines."""
    lines = [
        ln
        for ln in (ROOT / "policies" / "branch.yaml").read_text().splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]
    assert len(lines) <= 17


@pytest.mark.parametrize("path", BROKEN, ids=[p.name for p in BROKEN])
def test_broken_policy_is_rejected_with_location(path: Path) -> None:
    text = path.read_text(errors="replace")  # one of them is not UTF-8 on purpose
    expected = re.findall(r"^# expect: (.+)$", text, flags=re.M)
    assert expected, f"{path.name} announces no expected error"
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    got = [str(p) for p in info.value.problems]
    for exp in expected:
        want = f"{path}:{exp}"
        assert any(g.startswith(want) for g in got), f"expected {want!r}\ngot:\n" + "\n".join(got)


def test_check_cli_exit_status_and_stderr(tmp_path: Path) -> None:
    bad = ROOT / "tests" / "broken" / "unknown-key.yaml"
    r = subprocess.run(
        [sys.executable, "-m", "failoverd.cli", "check", str(bad)], capture_output=True, text=True, check=False
    )
    assert r.returncode == 2
    assert f"{bad}:6:5: uplinks.0.nexthop: unknown key" in r.stderr
    assert r.stdout == ""
    good = ROOT / "policies" / "branch.yaml"
    r = subprocess.run(
        [sys.executable, "-m", "failoverd.cli", "check", str(good)], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
    assert "fiber > lte" in r.stdout
    missing = tmp_path / "nope.yaml"
    r = subprocess.run(
        [sys.executable, "-m", "failoverd.cli", "check", str(missing)], capture_output=True, text=True, check=False
    )
    assert r.returncode == 2
    assert "cannot read" in r.stderr


def test_every_problem_is_reported_not_just_the_first() -> None:
    text = """
site: x
uplinks:
  - {name: a, interface: eth1, next_hop: 192.0.2.1, bogus: 1}
  - {name: b, interface: eth2, next_hop: 192.0.2.5, kind: laser}
classes:
  - {name: all, path: [a, b], when_all_down: panic}
"""
    with pytest.raises(PolicyError) as info:
        parse_policy_text(text, "p.yaml")
    paths = {p.path for p in info.value.problems}
    assert paths == {"uplinks.0.bogus", "uplinks.1.kind", "classes.0.when_all_down"}
    assert all(p.line in (4, 5, 7) for p in info.value.problems)


def test_defaults_and_durations() -> None:
    policy = parse_policy_text(
        """
site: s
uplinks:
  - name: a
    interface: eth1
    next_hop: 2001:db8::1
    probes:
      - {kind: udp-echo, target: 2001:db8:1::1, interval: 250ms, timeout: 0.5}
      - {kind: tcp, target: 192.0.2.7, port: 443, interval: 1m}
      - {kind: http, url: "https://example.net/health"}
    health: {down: {window: 2m}}
classes:
  - name: sip
    match: [{protocol: udp, dport: "5060-5061", dscp: [EF, 34]}]
    path: [a]
  - {name: all, path: [a]}
""",
        "inline",
    )
    a = policy.uplinks["a"]
    assert [p.interval for p in a.probes] == [0.25, 60.0, 1.0]
    assert a.probes[0].key == "udp-echo:2001:db8:1::1:7"
    assert a.health.quorum == 2  # a majority of three
    sip = policy.classes["sip"]
    assert sip.matches[0].dport == (5060, 5061)
    assert sip.matches[0].dscp == (46, 34)
    assert sip.matches[0].protocol == 17
    assert policy.classes["all"].matches == ()


def test_the_compiled_model_knows_every_probe_kind_the_schema_accepts() -> None:
    accepted = {get_args(get_type_hints(cls)["kind"])[0] for cls in get_args(get_args(schema.Probe)[0])}
    assert accepted == set(get_args(model.ProbeKind))


OPERATOR = """
site: s
uplinks:
  - {{name: a, interface: eth1, next_hop: 192.0.2.1, kind: cellular, {key}: {value}}}
classes:
  - {{name: all, path: [a]}}
"""


@pytest.mark.parametrize("key", ["operator", "carrier"])
def test_the_network_operator_is_named_by_operator_or_its_older_spelling_carrier(key: str) -> None:
    policy = parse_policy_text(OPERATOR.format(key=key, value="carrier-a"), "p.yaml")
    assert policy.uplinks["a"].operator == "carrier-a"


@pytest.mark.parametrize("key", ["operator", "carrier"])
def test_a_bad_operator_is_located_at_the_key_written(key: str) -> None:
    text = OPERATOR.format(key=key, value="[1]")
    with pytest.raises(PolicyError) as info:
        parse_policy_text(text, "p.yaml")
    (problem,) = info.value.problems
    assert problem.path == f"uplinks.0.{key}"
    line = text.splitlines()[3]
    assert (problem.line, problem.col) == (4, line.index(f"{key}: [1]") + len(key) + 3)


# -- check, run as root, for the unit's user -----------------------------------------------------------
@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory others may enter (pytest's tmp_path lies in one only its owner may)."""
    where = Path(tempfile.mkdtemp(prefix="fo-check-"))
    where.chmod(0o755)
    try:
        yield where
    finally:
        shutil.rmtree(where)


def test_unreadable_names_the_mode_or_the_directory_that_keeps_a_user_out(open_dir: Path) -> None:
    other, group = os.getuid() + 4242, os.getgid()  # a stranger in the file's group
    (open_dir / "d").mkdir(mode=0o755)
    f = open_dir / "d" / "keys"
    f.write_text("x")
    open_dir.chmod(0o755)
    f.chmod(0o600)
    assert "mode 600" in (unreadable(f, other, {group}) or "")
    assert unreadable(f, os.getuid(), set()) is None  # the owner
    f.chmod(0o640)
    assert unreadable(f, other, {group}) is None
    assert "mode 640" in (unreadable(f, other, set()) or "")  # not in the group, others may not
    (open_dir / "d").chmod(0o750)
    assert unreadable(f, other, {group}) is None
    assert f"may not enter {open_dir / 'd'}" in (unreadable(f, other, set()) or "")
    assert unreadable(open_dir / "d" / "missing", other, {group}) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="the check speaks for another user only when run as root")
def test_check_as_root_warns_of_files_the_units_user_cannot_read(open_dir: Path) -> None:
    where = open_dir
    keys = where / "keys"
    keys.write_text("")
    keys.chmod(0o600)
    policy = where / "policy.yaml"
    policy.write_text(
        "site: t\nuplinks: [{name: a, interface: eth0, next_hop: 198.18.0.1}]\nclasses: [{name: all, path: [a]}]\n"
        f"control: {{mqtt: {{enabled: true, keys_file: {keys}}}}}\n"
    )
    policy.chmod(0o600)

    def check() -> str:
        argv = [sys.executable, "-m", "failoverd.cli", "check", "--quiet", "--user", "nobody", str(policy)]
        r = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr
        return r.stderr

    err = check()
    assert f"the policy {policy}: user nobody (the unit's User=) cannot read it: mode 600" in err, err
    assert f"control.mqtt.keys_file {keys}: user nobody" in err, err
    policy.chmod(0o644)
    keys.chmod(0o644)
    assert "cannot read" not in check()
