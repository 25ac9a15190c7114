"""What one request on the command topic costs the daemon's loop before it is refused or run.

`python -m bench intake [--n 2000]`: JSON parsing and `signing.verify` of malformed, unsigned,
unknown-key, forged (a real key's name, a wrong signature), misdirected and valid requests, side by
side in one run: the figures control/intake.py's budgets rest on. No root, no network.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from failoverd.control import signing

HERE = signing.Here(prefix="failoverd", site="north", fleet_topic=False)


def _requests() -> tuple[dict[str, Callable[[int], bytes]], dict[str, Any]]:
    private = Ed25519PrivateKey.generate()
    keys = {"op/alice": private.public_key()}
    other = Ed25519PrivateKey.generate()
    dest = signing.site_dest("failoverd", "north")
    body = {"command": "drain", "uplink": "fiber", "reason": "bench", "ttl": 60}

    def signed(by: Ed25519PrivateKey, d: dict[str, Any]) -> Callable[[int], bytes]:
        # Each request distinct (issued grows), as a flood's or an operator's would be.
        return lambda i: json.dumps(signing.sign(body, "op/alice", by, 1.7e9 + i, d)).encode()

    kinds: dict[str, Callable[[int], bytes]] = {
        "malformed": lambda i: b'{"command": "drain", "uplink": ' + str(i).encode(),
        "unsigned": lambda i: json.dumps({**body, "n": i}).encode(),
        "unknown-key": lambda i: json.dumps({**body, "key": "op/eve", "issued": 1.7e9 + i, "sig": "AAAA"}).encode(),
        "forged": signed(other, dest),
        "misdirected": signed(private, signing.site_dest("failoverd", "south")),
        "valid": signed(private, dest),
    }
    return kinds, keys


def measure(n: int) -> dict[str, dict[str, float]]:
    kinds, keys = _requests()
    out: dict[str, dict[str, float]] = {}
    for kind, make in kinds.items():
        payloads = [make(i) for i in range(n)]
        costs = []
        for raw in payloads:
            start = time.perf_counter()
            try:
                request = json.loads(raw)
            except ValueError:
                request = None
            if isinstance(request, dict):
                signing.verify(request, keys, {}, here=HERE, wall=1.7e9 + n, max_age=1e9, clock_trusted=True)
            costs.append(time.perf_counter() - start)
        costs.sort()
        out[kind] = {
            "median_us": statistics.median(costs) * 1e6,
            "p99_us": costs[int(len(costs) * 0.99)] * 1e6,
            "per_s": len(costs) / sum(costs),
        }
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench intake")
    ap.add_argument("--n", type=int, default=2000, help="requests of each kind (default 2000)")
    args = ap.parse_args(argv)
    res = measure(args.n)
    print(f"{'request':<12} {'median µs':>10} {'p99 µs':>10} {'per s':>10}")
    for kind, r in res.items():
        print(f"{kind:<12} {r['median_us']:>10.1f} {r['p99_us']:>10.1f} {r['per_s']:>10.0f}")
    return 0
