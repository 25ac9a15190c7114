"""The Grafana dashboard's panels, drawn from a real Prometheus that scraped the lab gateway during a scenario.

`python -m lab dashboard [SCENARIO] [--out FILE.png]`: the gateway runs the scenario's policy with its
metrics endpoint on the management network, a real `prometheus` on the operations node scrapes it
every second while the scenario plays, and each panel of contrib/grafana/failoverd.json is evaluated
by that Prometheus (its own PromQL, over the query range API) and drawn: time series as lines, tables
at the moment most of their rows were present. Grafana itself is not needed to see what it would show.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.parse
from pathlib import Path
from typing import Any

from failoverd.policy import load_policy
from lab import scenario as sc
from lab.netns import LabError, wait_for
from lab.topology import ROOT, Lab

DASHBOARD = ROOT / "contrib" / "grafana" / "failoverd.json"
LISTEN = "198.18.20.1:9469"  # the gateway's management address: the operations node scrapes it
PROMETHEUS = "127.0.0.1:9090"  # inside the operations node
FETCH = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"


def _query(lab: Lab, path: str, **params: str) -> dict[str, Any]:
    url = f"http://{PROMETHEUS}{path}?{urllib.parse.urlencode(params)}"
    out = lab.topo.sh("ops", sc.PY, "-c", FETCH, url).stdout
    doc: dict[str, Any] = json.loads(out)
    if doc.get("status") != "success":
        raise LabError(f"prometheus: {doc}")
    return doc


def _legend(fmt: str, labels: dict[str, str]) -> str:
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def run(lab: Lab, name: str, out_png: Path, work: Path) -> Path:
    """Play scenario `name` with Prometheus scraping, then draw the dashboard's panels to `out_png`."""
    work.mkdir(parents=True, exist_ok=True)
    scenario = sc.load_scenario(name)
    text = (ROOT / scenario.policy).read_text()
    if "\ncontrol:\n" not in text:
        raise LabError(f"{scenario.policy} has no control: section to add metrics to")
    policy_file = work / "policy-with-metrics.yaml"
    policy_file.write_text(text.replace("\ncontrol:\n", f'\ncontrol:\n  metrics: {{listen: "{LISTEN}"}}\n', 1))
    conf = work / "prometheus.yml"
    conf.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - {{job_name: failoverd, static_configs: [{{targets: ['{LISTEN}']}}]}}\n"
    )
    tsdb = work / "tsdb"
    prom = lab.topo.spawn(
        "ops",
        [
            "prometheus",
            f"--config.file={conf}",
            f"--storage.tsdb.path={tsdb}",
            f"--web.listen-address={PROMETHEUS}",
        ],
        log=work / "prometheus.log",
    )
    try:
        wait_for(
            lambda: lab.topo.sh("ops", sc.PY, "-c", FETCH, f"http://{PROMETHEUS}/-/ready", check=False).returncode == 0,
            30,
            what="prometheus ready",
        )
        policy = load_policy(policy_file)
        r = sc.Run(lab, scenario, policy, work / "run", print, policy_file=str(policy_file))
        start = time.time()
        try:
            r.execute()
        finally:
            r.kill_daemon(signal.SIGKILL)
        end = time.time()
        panels = json.loads(DASHBOARD.read_text())["panels"]
        results = []
        for p in panels:
            series = []
            for t in p["targets"]:
                doc = _query(
                    lab, "/api/v1/query_range", query=t["expr"], start=f"{start:.3f}", end=f"{end:.3f}", step="1"
                )
                series.append((t, doc["data"]["result"]))
            results.append((p, series))
        return draw(results, start, end, f"{scenario.name}: {scenario.title}", out_png)
    finally:
        lab.topo.stop(prom)


def draw(
    results: list[tuple[dict[str, Any], list[tuple[dict[str, Any], list[dict[str, Any]]]]]],
    start: float,
    end: float,
    title: str,
    out: Path,
) -> Path:
    import matplotlib  # noqa: PLC0415 (heavy; only the lab needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = (len(results) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(14, 3.1 * rows))
    flat = list(axes.flat)
    for ax, (panel, series) in zip(flat, results, strict=False):
        ax.set_title(panel["title"], fontsize=9, loc="left")
        if panel["type"] == "table":
            _table(ax, series, start)
            continue
        for target, result in series:
            for s in result:
                xs = [float(v[0]) - start for v in s["values"]]
                ys = [float(v[1]) for v in s["values"]]
                ax.step(xs, ys, where="post", label=_legend(target.get("legendFormat", ""), s["metric"]), lw=1.2)
        ax.set_xlim(0, end - start)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper left", ncol=2)
        ax.set_xlabel("seconds into the scenario", fontsize=7)
    for ax in flat[len(results) :]:
        ax.axis("off")
    fig.suptitle(
        f"contrib/grafana/failoverd.json, queried from Prometheus scraping the lab gateway — {title}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _table(ax: Any, series: list[tuple[dict[str, Any], list[dict[str, Any]]]], start: float) -> None:
    """A table panel at the last instant the most of its rows were present (it is instant in Grafana)."""
    ax.axis("off")
    result = [s for _, r in series for s in r]
    if not result:
        ax.text(0.02, 0.5, "(no rows during the scenario)", fontsize=8)
        return
    counts: dict[float, int] = {}
    for s in result:
        for t, _ in s["values"]:
            counts[float(t)] = counts.get(float(t), 0) + 1
    at = max(counts, key=lambda t: (counts[t], t))  # the last moment with the most rows
    keys = sorted({k for s in result for k in s["metric"]})
    rows = []
    for s in result:
        value = next((v for t, v in s["values"] if float(t) == at), None)
        if value is not None:
            rows.append([s["metric"].get(k, "") for k in keys] + [f"{float(value):.0f}"])
    table = ax.table(cellText=rows[:12], colLabels=[*keys, "value"], loc="upper left", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.scale(1, 1.2)
    ax.set_title(ax.get_title(loc="left") + f"  (at {at - start:.0f} s)", fontsize=9, loc="left")
