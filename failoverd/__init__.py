"""failoverd: failover and disaster-roaming orchestration for Linux edge gateways."""

__version__ = "0.1.0"
# A wall clock before this cannot be right: no failoverd existed yet (the clock checker's floor).
BUILD_FLOOR = 1_761_955_200.0  # 2025-11-01T00:00:00Z
