"""Benchmarks: failover time, flap resistance and cost, side by side with peers."""
