"""Network namespaces and veth links for the lab and the integration tests (names always start fo-)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "fo-"


class LabError(Exception):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def existing(prefix: str = PREFIX) -> list[str]:
    out = ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def delete_namespaces(prefix: str) -> list[str]:
    """Remove every namespace named with this prefix, ending the processes inside first."""
    if not prefix.startswith(PREFIX):
        raise LabError(f"refusing to touch namespaces outside {PREFIX}*: {prefix}")
    gone = []
    for ns in existing(prefix):
        pids = ip("netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        # SIGKILL is delivered, not done: wait until they are gone, so that a lab built right after
        # does not meet their pid files (chronyd refuses to start beside a live one).
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            time.sleep(0.02)
        ip("netns", "del", ns, check=False)
        gone.append(ns)
    return gone


@dataclass
class Topology:
    """A set of namespaces `<prefix>-<node>` and veth links between them, removed as a whole."""

    prefix: str
    nodes: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.prefix.startswith(PREFIX):
            raise LabError(f"namespace prefix must start with {PREFIX}")

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def add_node(self, node: str) -> str:
        name = self.ns(node)
        ip("netns", "add", name)
        self.nodes.append(node)
        self.sh(node, "ip", "link", "set", "dev", "lo", "up")
        for key in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
            self.sh(node, "sysctl", "-qw", f"{key.replace('/', '.')}=1")
        return name

    def link(self, a: str, a_if: str, b: str, b_if: str) -> None:
        ip("-n", self.ns(a), "link", "add", "name", a_if, "type", "veth", "peer", "name", b_if, "netns", self.ns(b))
        ip("-n", self.ns(a), "link", "set", "dev", a_if, "up")
        ip("-n", self.ns(b), "link", "set", "dev", b_if, "up")

    def addr(self, node: str, ifname: str, cidr: str) -> None:
        ip("-n", self.ns(node), "addr", "add", cidr, "dev", ifname)

    def route(self, node: str, *args: str) -> None:
        ip("-n", self.ns(node), "route", "replace", *args)

    def sh(self, node: str, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            ["ip", "netns", "exec", self.ns(node), *cmd], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and r.returncode != 0:
            raise LabError(f"{node}: {' '.join(cmd)}: {r.stderr.strip() or r.stdout.strip()}")
        return r

    def nft(self, node: str, script: str) -> None:
        r = subprocess.run(
            ["ip", "netns", "exec", self.ns(node), "nft", "-f", "-"],
            input=script,
            text=True,
            capture_output=True,
            check=False,
        )
        if r.returncode != 0:
            raise LabError(f"{node}: nft: {r.stderr.strip()}")

    def spawn(self, node: str, cmd: Sequence[str], log: Path | None = None, **kw: object) -> subprocess.Popen[bytes]:
        out = log.open("ab") if log is not None else subprocess.DEVNULL
        p: subprocess.Popen[bytes] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(node), *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kw,
        )  # type: ignore[call-overload]
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """End one of our processes by its PID; SIGKILL if it does not go in time."""
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        return p.returncode

    def ipv6_settled(self) -> bool:
        """No node holds a tentative IPv6 address. The links' link-local addresses go through duplicate
        detection for a second or two after the veths come up (addresses added `nodad` do not), and
        until then neighbour discovery cannot run from them: a daemon started at once saw its first IPv6
        probes lost and judged its /v6 uplinks DOWN, to wait out their hold-down."""
        return not any(
            ip("-n", self.ns(n), "-6", "addr", "show", "tentative", check=False).stdout.strip() for n in self.nodes
        )

    def wait_ipv6_settled(self, timeout: float = 10) -> None:
        wait_for(
            self.ipv6_settled, timeout, what=f"the IPv6 addresses of {self.prefix}-* to finish duplicate detection"
        )

    def destroy(self) -> None:
        for p in self.procs:
            self.stop(p, signal.SIGKILL, timeout=5)
        delete_namespaces(self.prefix + "-")
        self.nodes.clear()


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise LabError(f"timed out after {timeout:g}s waiting for {what}")
