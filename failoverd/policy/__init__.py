"""The policy language: YAML validated at the edge, compiled to frozen runtime records."""

from failoverd.policy.load import load_policy, parse_policy_text
from failoverd.policy.model import Policy

__all__ = ["Policy", "load_policy", "parse_policy_text"]
