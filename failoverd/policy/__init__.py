"""The policy language: YAML validated at the edge, compiled to frozen runtime records."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from failoverd.policy.model import Policy

if TYPE_CHECKING:
    from failoverd.policy.load import load_policy, parse_policy_text

__all__ = ["Policy", "load_policy", "parse_policy_text"]


def __getattr__(name: str) -> Any:
    # The loader brings pydantic and ruamel (a third of a second): failoverctl, which only reads
    # the compiled model's types, should not pay for it.
    if name in ("load_policy", "parse_policy_text"):
        from failoverd.policy import load  # noqa: PLC0415

        return getattr(load, name)
    raise AttributeError(name)
