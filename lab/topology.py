"""Run a containerlab topology file on plain network namespaces: node → namespace, link → veth pair.

Only what the failoverd lab uses is supported: `kind: linux` nodes (defaults from `topology.kinds.linux`),
their `exec` lines (run with `sh -c` inside the node, the repository as working directory and on
PYTHONPATH, as the container would have it bound), and veth links given as `endpoints`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from lab.netns import PREFIX, LabError, Topology, delete_namespaces, existing

ROOT = Path(__file__).resolve().parent.parent
CLAB = ROOT / "containerlab" / "failoverd.clab.yml"


@dataclass(frozen=True)
class LabSpec:
    name: str
    nodes: dict[str, tuple[str, ...]]  # node → exec lines
    links: tuple[tuple[str, str, str, str], ...]  # (node a, iface a, node b, iface b)
    source: Path = CLAB


def load(path: Path = CLAB) -> LabSpec:
    doc: dict[str, Any] = YAML(typ="safe").load(path.read_text())
    topo = doc["topology"]
    defaults = (topo.get("kinds") or {}).get("linux") or {}
    nodes: dict[str, tuple[str, ...]] = {}
    for name, given in (topo.get("nodes") or {}).items():
        node = given or {}
        kind = node.get("kind", "linux")
        if kind != "linux":
            raise LabError(f"{path}: node {name}: kind {kind!r} needs containerlab; only linux nodes run here")
        nodes[name] = tuple(node.get("exec", defaults.get("exec", [])))
    links = []
    for i, link in enumerate(topo.get("links") or []):
        ends = link.get("endpoints") or []
        if len(ends) != 2:
            raise LabError(f"{path}: links.{i}: a veth link has two endpoints")
        (a, a_if), (b, b_if) = (e.split(":", 1) for e in ends)
        for n in (a, b):
            if n not in nodes:
                raise LabError(f"{path}: links.{i}: unknown node {n!r}")
        links.append((a, a_if, b, b_if))
    return LabSpec(str(doc["name"]), nodes, tuple(links), path)


@dataclass
class Lab:
    spec: LabSpec
    topo: Topology = field(init=False)

    def __post_init__(self) -> None:
        self.topo = Topology(f"{PREFIX}{self.spec.name}")
        self.topo.nodes = [n for n in self.spec.nodes if self.topo.ns(n) in existing(self.topo.prefix + "-")]

    @property
    def is_up(self) -> bool:
        return all(self.topo.ns(n) in existing(self.topo.prefix + "-") for n in self.spec.nodes)

    def up(self) -> None:
        """Build the lab from scratch, removing whatever an earlier (maybe crashed) run left."""
        self.down()
        try:
            for node in self.spec.nodes:
                self.topo.add_node(node)
            for a, a_if, b, b_if in self.spec.links:
                self.topo.link(a, a_if, b, b_if)
            # The nodes' `python3` is the interpreter running the lab (its venv has what the modem
            # simulator imports), as the container image's PATH leads to its venv.
            path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
            env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": path}
            for node, lines in self.spec.nodes.items():
                for line in lines:
                    r = subprocess.run(
                        ["ip", "netns", "exec", self.topo.ns(node), "sh", "-c", line],
                        cwd=ROOT,
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=30,
                        check=False,
                    )
                    if r.returncode != 0:
                        raise LabError(f"{node}: exec {line!r}: {r.stderr.strip() or r.stdout.strip()}")  # noqa: TRY301
            self.topo.wait_ipv6_settled()
        except BaseException:
            self.down()
            raise

    def down(self) -> list[str]:
        gone = delete_namespaces(self.topo.prefix + "-")
        self.topo.nodes.clear()
        return gone

    def status(self) -> list[dict[str, Any]]:
        have = set(existing(self.topo.prefix + "-"))
        rows = []
        for node in self.spec.nodes:
            ns = self.topo.ns(node)
            pids = (
                subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout.split()
                if ns in have
                else []
            )
            rows.append({"node": node, "namespace": ns, "up": ns in have, "processes": len(pids)})
        return rows

    def exec(self, node: str, argv: list[str]) -> int:
        if node not in self.spec.nodes:
            raise LabError(f"unknown node {node!r} (nodes: {', '.join(self.spec.nodes)})")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run(
            ["ip", "netns", "exec", self.topo.ns(node), *argv], cwd=ROOT, env=env, check=False
        ).returncode

    def peer(self, node: str, iface: str) -> tuple[str, str]:
        """The other end of a link."""
        for a, a_if, b, b_if in self.spec.links:
            if (a, a_if) == (node, iface):
                return b, b_if
            if (b, b_if) == (node, iface):
                return a, a_if
        raise LabError(f"no link at {node}:{iface}")
