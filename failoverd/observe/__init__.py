"""Observability: structured logs, the decision journal, and systemd notification."""
