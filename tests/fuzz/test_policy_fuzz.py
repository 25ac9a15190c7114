"""The policy loader on random and mangled input: a Policy or a PolicyError located file:line:col, never a traceback."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from budget import examples
from hypothesis import example, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from failoverd.errors import PolicyError
from failoverd.policy.load import load_policy, parse_policy_text
from failoverd.policy.model import Policy

ROOT = Path(__file__).resolve().parents[2]
VALID = [
    p.read_text()
    for p in sorted((ROOT / "policies").glob("*.yaml"))
    + sorted((ROOT / "tests" / "golden" / "policies").glob("*.yaml"))
]
SOURCE = "fuzz.yaml"
LOCATED = re.compile(rf"^{re.escape(SOURCE)}:[1-9]\d*:[1-9]\d*: .*: .")


def _keys(node: Any, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            out.add(str(k))
            _keys(v, out)
    elif isinstance(node, list):
        for v in node:
            _keys(v, out)
    return out


# The words of real policies, so that random documents get past the first "unknown key".
WORDS = sorted(set().union(*(_keys(YAML(typ="safe").load(t), set()) for t in VALID)))


def judge(text: str, source: str = SOURCE) -> Policy | PolicyError:
    """The property: either a compiled policy or every problem located inside the text."""
    try:
        return parse_policy_text(text, source)
    except PolicyError as exc:
        assert exc.problems, "a PolicyError without problems"
        last_line = len(text.splitlines()) + 1  # YAML may point just past the last line break
        for p in exc.problems:
            assert LOCATED.match(str(p)), str(p)
            assert "\n" not in str(p), f"one problem, one line: {p!r}"
            assert p.line <= last_line, f"{p} points past the text ({last_line} lines)"
        return exc


# -- regressions: each of these raised something other than PolicyError before the fix ----------------


def laughs(levels: int) -> str:
    """A "billion laughs": each alias list holds nine of the one before."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("site: " + "[" * 400 + "]" * 400, "1:", "nested more than 64 levels deep"),  # RecursionError
        ("".join("  " * i + f"k{i}:\n" for i in range(300)), "", "nested more than 64 levels deep"),
        (laughs(9), "1:1", "expands to more than"),  # ran out of memory expanding 9**9 strings
        ("site: 1" + "0" * 5000 + "\n", "1:7", "cannot read this value"),  # ValueError: int max str digits
        ("site: 2001-13-45\n", "1:7", "cannot read this value: month must be in 1..12"),  # ValueError
        ("site: 2001-02-30 12:00:00\n", "1:7", "day is out of range"),
        ("site: a\x00\n", "1:8", "character U+0000"),  # ruamel ReaderError
        ("site: \ud800\n", "1:7", "character U+D800"),  # a lone surrogate from a bad decode
    ],
    ids=["deep-flow", "deep-block", "billion-laughs", "huge-int", "bad-month", "bad-day", "nul", "surrogate"],
)
def test_inputs_that_crashed_the_loader_are_located_errors(text: str, where: str, message: str) -> None:
    out = judge(text)
    assert isinstance(out, PolicyError)
    assert any(str(p).startswith(f"{SOURCE}:{where}") and message in p.message for p in out.problems), str(out)


def test_a_key_with_a_line_break_is_named_on_one_line() -> None:
    out = judge('"si\\nte": a\n" ": b\n')  # str(problem) spanned two lines before
    assert isinstance(out, PolicyError)
    assert {p.path for p in out.problems} >= {"'si\\nte'", "' '"}, out


# -- random input ------------------------------------------------------------------------------------

yaml_chars = st.sampled_from(list("abcsite:-[]{},&*!|>'\"#?%@`\t\n \\0123456789.~\x00\x85\u2028\ufeff\ud800é"))


@settings(max_examples=examples(300))
@given(st.text(yaml_chars, max_size=120))
def test_random_text(text: str) -> None:
    judge(text)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.sampled_from(WORDS),
    st.text(max_size=12),
    st.sampled_from(["1s", "500ms", "-3m", "1e999", "eth0", "198.18.0.1", "::1", "0x10", "2001-13-45", "", "~"]),
)
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)


def dump(node: Any, flow: bool) -> str:
    yaml = YAML(typ="safe")
    yaml.default_flow_style = flow
    out: list[str] = []

    class Sink:
        def write(self, s: str | bytes) -> None:
            out.append(s.decode() if isinstance(s, bytes) else s)

    yaml.dump(node, Sink())
    return "".join(out)


@settings(max_examples=examples(100))
@given(documents, st.booleans())
def test_random_documents_with_the_policy_words(doc: Any, flow: bool) -> None:
    judge(dump(doc, flow))


@settings(max_examples=examples(100))
@given(st.binary(max_size=200))
@example(b"site: \xff\xfe\n")
@example(b"\xef\xbb\xbfsite: a\n")
def test_random_bytes_from_a_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / SOURCE
        path.write_bytes(data)
        try:
            load_policy(path)
        except PolicyError as exc:
            for p in exc.problems:
                assert re.match(rf"^{re.escape(str(path))}:[1-9]\d*:[1-9]\d*: \S", str(p)), str(p)


# -- valid policies, mangled -------------------------------------------------------------------------


@st.composite
def mangled(draw: st.DrawFn) -> str:
    """A valid policy with a few line-level edits: the kind a hurried operator makes."""
    lines = draw(st.sampled_from(VALID)).splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        op = draw(st.sampled_from(["drop", "dup", "indent", "dedent", "tab", "value", "key", "cut", "swap", "alias"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, line)
        elif op == "indent":
            lines[i] = " " * draw(st.integers(1, 4)) + line
        elif op == "dedent":
            lines[i] = line.lstrip()
        elif op == "tab":
            lines[i] = line.replace("  ", "\t", 1)
        elif op == "value" and ":" in line:
            key = line.split(":", 1)[0]
            value = st.sampled_from(["", "-1", "1e999", "[]", "{}", "null", "*x", "&a x", "!!int z", "0" * 4400])
            lines[i] = f"{key}: {draw(value | st.text(max_size=8))}"
        elif op == "key" and ":" in line:
            lines[i] = line.replace(line.strip().split(":", 1)[0].lstrip("- "), draw(st.sampled_from(WORDS)), 1)
        elif op == "cut":
            lines[i] = line[: draw(st.integers(0, len(line)))]
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], line
        elif op == "alias":
            lines.insert(0, "x: &x " + draw(st.sampled_from(["[a, b]", "{a: 1}", "1"])))
            lines[min(i + 1, len(lines) - 1)] += " *x"
        if not lines:
            lines = [""]
    return "\n".join(lines) + "\n"


@pytest.mark.filterwarnings("ignore::ruamel.yaml.error.ReusedAnchorWarning")
@settings(max_examples=examples(20))
@given(mangled())
def test_mangled_valid_policies(text: str) -> None:
    judge(text)


def test_every_valid_policy_still_loads() -> None:
    for text in VALID:
        assert isinstance(judge(text), Policy)
