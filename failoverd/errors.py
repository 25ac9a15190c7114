"""failoverd's small exception hierarchy: each message names the thing at fault and where."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class FailoverdError(Exception):
    """Base of every error failoverd raises on purpose."""


@dataclass(frozen=True, order=True, slots=True)
class Problem:
    """One thing wrong in a policy file, located for an editor's jump-to-error."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.path}: {self.message}"


class PolicyError(FailoverdError):
    """A policy file that must not be applied; carries every problem found, not just the first."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class EngineBug(FailoverdError):
    """An illegal state transition or broken invariant: a bug in failoverd, never an operator error."""
