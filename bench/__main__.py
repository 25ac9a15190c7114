"""`python -m bench NAME`: failoverd's benchmarks (see bench/README.md)."""

from __future__ import annotations

import sys


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("engine",):
        print("usage: python -m bench engine [...]   (failover-time benchmarks against FRR: not yet)", file=sys.stderr)
        return 2
    from bench import engine  # noqa: PLC0415

    return engine.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
