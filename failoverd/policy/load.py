"""Read a policy file: YAML → pydantic → semantic checks → compiled policy, every error as file:line:col."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from failoverd.errors import PolicyError, Problem
from failoverd.policy.compile import compile_policy
from failoverd.policy.model import Policy
from failoverd.policy.schema import PolicyDocument
from failoverd.policy.verify import verify

Loc = Sequence[str | int]
M = TypeVar("M", bound=BaseModel)


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


def _plain(node: Any) -> Any:
    """ruamel's round-trip types subclass int/str/float; strict pydantic wants the plain ones."""
    if isinstance(node, CommentedMap):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, CommentedSeq):
        return [_plain(v) for v in node]
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
    return ".".join(str(p) for p in loc) or "(top)"


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


def parse_document(text: str, source: str, model: type[M]) -> tuple[M, _Locator]:
    """YAML text → a validated pydantic model, or PolicyError with every problem located in the file."""
    yaml = YAML(typ="rt")
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        raise PolicyError([Problem(source, line, col, "(yaml)", problem)]) from None
    if not isinstance(doc, CommentedMap):
        raise PolicyError([Problem(source, 1, 1, "(top)", f"expected a mapping ({model.__doc__ or model.__name__})")])
    locator = _Locator(doc)
    try:
        return model.model_validate(_plain(doc)), locator
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
