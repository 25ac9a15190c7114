"""One PNG per scenario run: uplink states over time, per-class delivery by uplink, faults marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STATE_COLOURS = {
    "UP": "#2e7d32",
    "DEGRADED": "#f9a825",
    "DOWN": "#c62828",
    "STANDBY": "#bdbdbd",
    "ACTIVATING": "#4fc3f7",
    "FAILED": "#6a1b9a",
    "UNKNOWN": "#eeeeee",
}
UPLINK_COLOURS = ["#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#8d6e63", "#9e9d24"]


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib  # noqa: PLC0415 (heavy; only the lab needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    states = report.get("states", [])
    uplinks = list(states[0][1]) if states else []
    classes = list(report.get("buckets", {}))
    fig, axes = plt.subplots(
        1 + len(classes),
        1,
        figsize=(12, 2.2 + 2.2 * len(classes)),
        sharex=True,
        gridspec_kw={"height_ratios": [max(1, len(uplinks)) * 0.5] + [1.6] * len(classes)},
    )
    axes = list(axes) if classes else [axes]
    end = max([s[0] for s in states] + [0.0]) + 0.1
    ax = axes[0]
    for i, name in enumerate(uplinks):
        spans: list[tuple[float, float, str]] = []
        for t, ups, _ in states:
            st = ups.get(name, "UNKNOWN").rstrip("*")
            if spans and spans[-1][2] == st:
                spans[-1] = (spans[-1][0], t, st)
            else:
                spans.append((t, t, st))
        for j, (a, _, st) in enumerate(spans):
            b = spans[j + 1][0] if j + 1 < len(spans) else end
            ax.broken_barh([(a, b - a)], (i - 0.4, 0.8), color=STATE_COLOURS.get(st, "#999999"))
            if b - a > end / 25:
                ax.text(a + (b - a) / 2, i, st, ha="center", va="center", fontsize=7, color="white")
    ax.set_yticks(range(len(uplinks)), uplinks)
    ax.set_title(
        f"{report['scenario']}{' under ' + report['policy'] if report.get('policy') else ''}: {report.get('title', '')}"
        f" — {'PASSED' if report['passed'] else 'FAILED'}",
        loc="left",
    )
    colour = {name: UPLINK_COLOURS[i % len(UPLINK_COLOURS)] for i, name in enumerate(uplinks)}
    # Traffic through a modem is named by uplink and carrier (mobile/carrier-b): a colour of its own each.
    extra = sorted({s for b in report.get("buckets", {}).values() for _, by in b for s in by} - set(colour))
    colour |= {s: UPLINK_COLOURS[(len(colour) + i) % len(UPLINK_COLOURS)] for i, s in enumerate(extra)}
    for k, cls in enumerate(classes):
        ax = axes[1 + k]
        buckets = report["buckets"][cls]
        sources = sorted({s for _, by in buckets for s in by})
        # Buckets with no arrival are absent from the report: put the zeros back, or a gap is drawn over.
        dense = {round(t, 1): by for t, by in buckets}
        grid = [round(i * 0.1, 1) for i in range(int(end * 10) + 1)]
        for s in sources:
            xs = grid
            ys = [dense.get(t, {}).get(s, 0) * 10 for t in grid]  # per 100 ms → per second
            ax.fill_between(xs, ys, step="post", alpha=0.7, color=colour.get(s, "#555555"), label=f"via {s}")
        info = report.get("classes", {}).get(cls, {})
        ax.set_ylabel(f"{cls}{' (IPv6)' if cls.endswith('/v6') else ''}\npackets/s")
        ax.legend(loc="upper right", fontsize=7)
        ax.text(
            0.01,
            0.9,
            f"longest gap {info.get('outage_ms')} ms, lost {info.get('lost_packets')}",
            transform=ax.transAxes,
            fontsize=8,
            va="top",
        )
    for ax in axes:
        for e in report.get("timeline", []):
            if e["kind"] == "fault":
                ax.axvline(e["t"], color="black", linestyle="--", linewidth=0.8)
    faults = [e for e in report.get("timeline", []) if e["kind"] == "fault"]
    for i, e in enumerate(faults):
        # Stagger the labels so that faults injected together stay readable.
        axes[0].text(e["t"], len(uplinks) - 0.45 - 0.35 * (i % 3), " " + e["what"], fontsize=7, va="bottom")
    axes[-1].set_xlabel("seconds since traffic start")
    axes[-1].set_xlim(0, end)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare(report: dict[str, Any], path: Path) -> Path:
    """Each class's delivery under the scenario's policy and under its baseline, one above the other,
    coloured by the uplink (and carrier) that carried it: the outages side by side."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    runs = [(report["policy"], report), (report["baseline"]["policy"], report["baseline"]["report"])]
    classes = list(report.get("buckets", {}))
    fig, axes = plt.subplots(2 * len(classes), 1, figsize=(12, 2.2 * 2 * len(classes)), sharex=True)
    end = max(max([s[0] for s in r.get("states", [])] + [0.0]) for _, r in runs) + 0.1
    grid = [round(i * 0.1, 1) for i in range(int(end * 10) + 1)]
    sources = sorted({s for _, r in runs for b in r.get("buckets", {}).values() for _, by in b for s in by})
    colour = {s: UPLINK_COLOURS[i % len(UPLINK_COLOURS)] for i, s in enumerate(sources)}
    panels = [(cls, policy, r) for cls in classes for policy, r in runs]
    for ax, (cls, policy, r) in zip(axes, panels, strict=True):
        dense = {round(t, 1): by for t, by in r.get("buckets", {}).get(cls, [])}
        for s in sources:
            ys = [dense.get(t, {}).get(s, 0) * 10 for t in grid]
            if any(ys):
                ax.fill_between(grid, ys, step="post", alpha=0.7, color=colour[s], label=f"via {s}")
        info = r.get("classes", {}).get(cls, {})
        ax.set_ylabel(f"{cls}\npackets/s")
        ax.set_title(
            f"{cls} under {policy}: longest gap {info.get('outage_ms')} ms, lost {info.get('lost_packets')}",
            loc="left",
            fontsize=9,
        )
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=7)
        for e in r.get("timeline", []):
            if e["kind"] == "fault":
                ax.axvline(e["t"], color="black", linestyle="--", linewidth=0.8)
    faults = [e for e in report.get("timeline", []) if e["kind"] == "fault"]
    for i, e in enumerate(faults):
        axes[0].text(e["t"], axes[0].get_ylim()[1] * (0.85 - 0.15 * (i % 3)), " " + e["what"], fontsize=7)
    fig.suptitle(f"{report['scenario']}: {report.get('title', '')}", x=0.01, ha="left", fontsize=10)
    axes[-1].set_xlabel("seconds since traffic start")
    axes[-1].set_xlim(0, end)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
