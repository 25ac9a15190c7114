"""failoverd: failover and disaster-roaming orchestration for Linux edge gateways."""

__version__ = "0.1.0"
