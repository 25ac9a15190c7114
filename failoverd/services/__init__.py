"""The daemon's long-running parts, each a Service with one shape: run, reconfigure, status."""
