"""Read a policy file: YAML → pydantic → semantic checks → compiled policy, every error as file:line:col."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import MaxDepthExceededError
from ruamel.yaml.constructor import ConstructorError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from failoverd.errors import PolicyError, Problem
from failoverd.policy.compile import compile_policy
from failoverd.policy.model import Policy
from failoverd.policy.schema import PolicyDocument
from failoverd.policy.verify import verify

Loc = Sequence[str | int]
M = TypeVar("M", bound=BaseModel)

# A policy is a few levels deep; these bounds keep a hostile or broken file from exhausting the
# stack (ruamel composes recursively) or memory (aliases are expanded, 9 aliases of 9 of 9... is a
# "billion laughs") before a located error can be given.
MAX_DEPTH = 64
MAX_VALUES = 100_000


class _TooBig(Exception):
    """The document nests or expands beyond MAX_DEPTH / MAX_VALUES; the message says which."""


class _Constructor(RoundTripConstructor):
    """ruamel's round-trip constructor, but a scalar it cannot build (a timestamp on 2001-13-45, an
    integer of more digits than Python converts) is a located YAML error rather than a ValueError."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            # Python's own advice (sys.set_int_max_str_digits) is not the operator's to take.
            reason = str(exc).split(";", 1)[0]
            raise ConstructorError(problem=f"cannot read this value: {reason}", problem_mark=node.start_mark) from None


@dataclass(frozen=True, slots=True)
class _Locator:
    """Maps a dotted path in the document to the line and column where it stands (1-based)."""

    root: Any

    def find(self, loc: Loc, at_key: bool = False) -> tuple[int, int, tuple[str | int, ...]]:
        """Where `loc` stands; at_key points at the key itself rather than its value (unknown keys)."""
        node = self.root
        line, col = 1, 1
        kept: list[str | int] = []
        for i, part in enumerate(loc):
            last = i == len(loc) - 1
            if isinstance(node, CommentedMap) and part in node:
                ln, cl = node.lc.value(part) if last and not at_key else node.lc.key(part)
                if last and isinstance(node[part], CommentedMap | CommentedSeq) and len(node[part]) == 0:
                    ln, cl = node.lc.key(part)
                line, col = ln + 1, cl + 1
                kept.append(part)
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                ln, cl = node.lc.item(part)
                line, col = ln + 1, cl + 1
                kept.append(part)
                node = node[part]
            elif isinstance(node, CommentedMap) and not last and loc[i + 1] in node:
                # A discriminator tag in pydantic's loc (probes.0.icmp.target): not a key in the file.
                continue
            else:
                # A key left out (so its default applies): point at the mapping that lacks it.
                kept.extend(loc[i:])
                if isinstance(node, CommentedMap | CommentedSeq) and node.lc.line is not None:
                    line, col = node.lc.line + 1, node.lc.col + 1
                break
        return line, col, tuple(kept)


def _plain(node: Any, budget: list[int], depth: int = 0) -> Any:
    """ruamel's round-trip types subclass int/str/float; strict pydantic wants the plain ones.

    Aliases are expanded here, so `budget` (values left) bounds the copy, and `depth` an alias to its own
    ancestor."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooBig(f"the document expands to more than {MAX_VALUES} values (YAML aliases?)")
    if depth > MAX_DEPTH and isinstance(node, CommentedMap | CommentedSeq):
        raise _TooBig(f"nested more than {MAX_DEPTH} levels deep (an alias inside itself?)")
    if isinstance(node, CommentedMap):
        return {str(k): _plain(v, budget, depth + 1) for k, v in node.items()}
    if isinstance(node, CommentedSeq):
        return [_plain(v, budget, depth + 1) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def _dotted(loc: Sequence[str | int]) -> str:
    # A key with a line break or blank would break "one problem, one line" (an editor's jump-to-error).
    parts = (p if isinstance(p, int) or (p.isprintable() and p.strip() == p and p) else repr(p) for p in loc)
    return ".".join(str(p) for p in parts) or "(top)"


def _message(err: Any) -> str:
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown key (check its spelling and indentation)"
    if err["type"] == "missing":
        return "required key is missing"
    if err["type"] == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tag_name = str(ctx.get("discriminator", "kind")).strip("'")
        return f"unknown {tag_name} {ctx.get('tag')!r}: expected one of {ctx.get('expected_tags')}"
    return msg.removeprefix("Value error, ")


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of a character index."""
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def parse_document(text: str, source: str, model: type[M]) -> tuple[M, _Locator]:
    """YAML text → a validated pydantic model, or PolicyError with every problem located in the file."""
    yaml = YAML(typ="rt")
    yaml.Constructor = _Constructor
    yaml.max_depth = MAX_DEPTH  # ruamel >= 0.19: refused while composing, before the stack runs out
    try:
        doc = yaml.load(text)
    except MaxDepthExceededError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        raise PolicyError([Problem(source, line, col, "(yaml)", f"nested more than {MAX_DEPTH} levels deep")]) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        raise PolicyError([Problem(source, line, col, "(yaml)", problem)]) from None
    except ReaderError as exc:  # a control character or lone surrogate: not a MarkedYAMLError
        line, col = _position(text, int(exc.position))
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        raise PolicyError([Problem(source, line, col, "(yaml)", f"character {char}: {exc.reason}")]) from None
    except YAMLError as exc:
        raise PolicyError([Problem(source, 1, 1, "(yaml)", str(exc).strip() or "invalid YAML")]) from None
    if not isinstance(doc, CommentedMap):
        raise PolicyError([Problem(source, 1, 1, "(top)", f"expected a mapping ({model.__doc__ or model.__name__})")])
    locator = _Locator(doc)
    try:
        plain = _plain(doc, [MAX_VALUES])
    except _TooBig as exc:
        raise PolicyError([Problem(source, 1, 1, "(top)", str(exc))]) from None
    try:
        return model.model_validate(plain), locator
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            line, col, kept = locator.find(err["loc"], at_key=err["type"] == "extra_forbidden")
            problems.append(Problem(source, line, col, _dotted(kept), _message(err)))
        raise PolicyError(sorted(set(problems))) from None


def locate(locator: _Locator, source: str, findings: Sequence[tuple[Loc, str]]) -> PolicyError:
    problems = []
    for loc, message in findings:
        line, col, kept = locator.find(loc)
        problems.append(Problem(source, line, col, _dotted(kept), message))
    return PolicyError(sorted(set(problems)))


def parse_policy_text(text: str, source: str) -> Policy:
    """Validate and compile one policy document; raise PolicyError with every problem found."""
    document, locator = parse_document(text, source, PolicyDocument)
    findings = verify(document)
    if findings:
        raise locate(locator, source, findings)
    return compile_policy(document, source)


def load_policy(path: str | Path) -> Policy:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise PolicyError([Problem(str(p), 0, 0, "(file)", f"cannot read: {exc.strerror}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise PolicyError(
            [Problem(str(p), line, col, "(file)", "not UTF-8 text: a policy is written in UTF-8")]
        ) from None
    return parse_policy_text(text, str(p))
