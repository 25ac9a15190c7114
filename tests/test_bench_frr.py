"""The FRR peer's configuration: a BGP session of each family to each ISP, each with BFD, and FRR accepts it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench.frr import ANNOUNCED, SESSIONS, config


def _af_blocks(conf: str) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {}
    current: str | None = None
    for line in conf.splitlines():
        if line.startswith(" address-family "):
            current = line.split()[1]
            blocks[current] = []
        elif line.startswith(" exit-address-family"):
            current = None
        elif current is not None:
            blocks[current].append(line.strip())
    return blocks


def test_each_session_carries_its_own_family_with_bfd() -> None:
    conf = config("gw", bfd=True, keepalive=3, hold=9)
    blocks = _af_blocks(conf)
    assert " no bgp default ipv4-unicast" in conf.splitlines()
    for addr, _, _ in SESSIONS["gw"][2]:
        af = "ipv6" if ":" in addr else "ipv4"
        other = "ipv4" if af == "ipv6" else "ipv6"
        assert f"neighbor {addr} activate" in blocks[af]
        assert not any(addr in line for line in blocks[other])
        assert f" neighbor {addr} bfd profile fast" in conf.splitlines()
    # The fiber is preferred in both families.
    assert "neighbor 198.18.1.1 route-map PREFERRED in" in blocks["ipv4"]
    assert "neighbor 2001:db8:1::1 route-map PREFERRED in" in blocks["ipv6"]


def test_the_isps_announce_the_internet_in_both_families() -> None:
    for node in ("isp-fiber", "mno-a"):
        blocks = _af_blocks(config(node, bfd=False, keepalive=3, hold=9))
        assert f"network {ANNOUNCED['ipv4']}" in blocks["ipv4"]
        assert f"network {ANNOUNCED['ipv6']}" in blocks["ipv6"]


@pytest.mark.skipif(shutil.which("vtysh") is None, reason="FRR's vtysh is not installed")
@pytest.mark.parametrize("node", list(SESSIONS))
def test_frr_accepts_the_configuration(node: str, tmp_path: Path) -> None:
    conf = tmp_path / "frr.conf"
    conf.write_text(config(node, bfd=True, keepalive=3, hold=9))
    cmd = ["vtysh", "--dryrun", "-f", str(conf)]  # FRR's own parser, no daemon needed
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
