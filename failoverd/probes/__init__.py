"""Probes: one module per kind; each sends one probe out of its uplink (SO_MARK) and times the answer."""
