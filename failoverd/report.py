"""The incident report: a period of the history as a timeline for the post-incident evaluation, in Markdown."""

# Theory of operation
# -------------------
# Everything a report says comes from the history records the daemon already keeps (decisions,
# uplink changes, alarms, commands, clock verdicts and steps, standby actions, drills, reloads,
# starts), so `failoverctl report` (records from the running daemon) and `failoverd report
# STATE_DIR` (the history file, offline, for a gateway that was brought back to the bench) give the
# same document. Nothing here reads a clock: the period and "now" are parameters.
#
# Time. Each record carries the wall clock (what people read, and what the period is given in) and
# the monotonic clock (what failoverd's timers ran on). Durations between two records of one boot
# are taken from the monotonic clock, so that a wall clock stepped during the incident (the 2024
# backbone outage was a time fault) cannot stretch or shrink "time on backup"; across a reboot, where
# the monotonic clock starts again, only the wall clock is left and the report says so.

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
FAULTS = frozenset({"DOWN", "DEGRADED", "FAILED"})
NO_ROUTE = frozenset({"unreachable", "blackhole", "withdrawn", "pending"})  # forwarded nowhere
UNKNOWN = "not known"  # before the first decision the history holds (a daemon starting)


def parse_when(text: str, now: float) -> float:
    """A point in time for --since/--until: `now`, a span ago (`90m`, `2h`, `1.5d`), a Unix time, or
    an ISO 8601 time (`2026-12-02T10:00`, UTC unless it names its offset)."""
    text = text.strip()
    if text == "now":
        return now
    m = _RELATIVE.match(text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    from datetime import UTC, datetime  # noqa: PLC0415 (only for this form)

    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: write now, a span ago (90m, 2h, 1d), a Unix time or 2026-12-02T10:00 (UTC)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def utc(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 10)}"


@dataclass(frozen=True, slots=True)
class Span:
    """A class's forwarding over a stretch of the period: via an uplink, or a route kind."""

    cls: str
    where: str  # an uplink's name, or "unreachable", "blackhole", "withdrawn", "unknown"
    start: float  # wall
    seconds: float
    via: bool  # where is an uplink


@dataclass(slots=True)
class Incident:
    since: float
    until: float
    site: str | None
    metered: tuple[str, ...]
    spans: list[Span] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # those in the period, in order
    wall_only: bool = False  # a duration had to be taken from the wall clock (a reboot in the period)
    first_record: float | None = None  # the oldest record the history still holds
    at_since: dict[str, str] = field(default_factory=dict)  # class -> where it was forwarded when the period began
    meters: list[dict[str, Any]] = field(default_factory=list)  # counter readings: the last before, those within

    def by_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") in kinds]

    def time_on(self) -> dict[str, dict[str, float]]:
        """Per class: seconds per uplink (or route kind) in the period."""
        out: dict[str, dict[str, float]] = {}
        for s in self.spans:
            per = out.setdefault(s.cls, {})
            per[s.where] = per.get(s.where, 0.0) + s.seconds
        return out

    def metered_bytes(self) -> dict[str, tuple[int, int, float]]:
        """Per metered uplink with readings: bytes received and sent between the readings of the period
        (from the last one before it), and when the last was read. A counter below its predecessor was
        reset (the interface was created again): it counts from zero."""
        out: dict[str, tuple[int, int, float]] = {}
        for name in self.metered:
            mine = [m for m in self.meters if m.get("uplink") == name]
            if len(mine) < 2:
                continue
            rx = tx = 0
            for a, b in itertools.pairwise(mine):
                rx += b["rx_bytes"] - a["rx_bytes"] if b["rx_bytes"] >= a["rx_bytes"] else b["rx_bytes"]
                tx += b["tx_bytes"] - a["tx_bytes"] if b["tx_bytes"] >= a["tx_bytes"] else b["tx_bytes"]
            out[name] = (rx, tx, float(mine[-1]["wall"]))
        return out

    def switches(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.by_kind("decision"):
            out[r["class"]] = out.get(r["class"], 0) + 1
        return out


def _where(r: Mapping[str, Any]) -> tuple[str, bool]:
    if r.get("uplink"):
        return str(r["uplink"]), True
    return str(r.get("route") or "unknown"), False


class _Clock:
    """Elapsed time between records: monotonic within a boot, the wall clock across a reboot."""

    def __init__(self) -> None:
        self.wall_only = False

    def between(self, a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
        same_boot = a.get("boot") == b.get("boot") and b["mono"] >= a["mono"]
        if same_boot:
            return float(b["mono"] - a["mono"])
        self.wall_only = True
        return max(0.0, float(b["wall"] - a["wall"]))


def build(
    records: Iterable[Mapping[str, Any]],
    since: float,
    until: float,
    *,
    site: str | None = None,
    metered: Sequence[str] = (),
) -> Incident:
    """The incident of [since, until] (wall times) from history records in the order they were written."""
    if until <= since:
        raise ValueError("the period is empty: --until must be after --since")
    ordered = [
        dict(r) for r in records if isinstance(r.get("wall"), int | float) and isinstance(r.get("mono"), int | float)
    ]
    # Tag each record with the boot it was written in (the start records name it), for _Clock.
    boot: str | None = None
    for r in ordered:
        if r.get("kind") == "start":
            boot = r.get("boot")
        r["boot"] = boot
    inc = Incident(since, until, site, tuple(metered))
    inc.first_record = ordered[0]["wall"] if ordered else None
    clock = _Clock()
    current: dict[str, tuple[str, bool, dict[str, Any]]] = {}  # class -> where, via, the record it began at
    meter_before: dict[str, dict[str, Any]] = {}
    for r in ordered:
        if r["wall"] >= since:
            break
        if r.get("kind") == "meter":
            meter_before[str(r.get("uplink"))] = r
        if r.get("kind") == "decision":
            where, via = _where(r)
            current[r["class"]] = (where, via, r)
    # Whatever held at `since` is taken from there: its record lies before the period.
    opened: dict[str, tuple[str, bool, float, dict[str, Any] | None]] = {
        c: (where, via, since, None) for c, (where, via, _) in current.items()
    }
    inc.at_since = {c: where for c, (where, _, _) in current.items()}
    inc.meters = list(meter_before.values()) + [
        r for r in ordered if r.get("kind") == "meter" and since <= r["wall"] <= until
    ]
    last: dict[str, Any] | None = None
    for r in ordered:
        if r["wall"] < since:
            continue
        if r["wall"] > until:
            break
        inc.records.append({k: v for k, v in r.items() if k != "boot"})
        if r.get("kind") != "decision":
            last = r
            continue
        cls = r["class"]
        if cls in opened:
            where, via, start, began = opened[cls]
            seconds = clock.between(began, r) if began is not None else max(0.0, r["wall"] - since)
            inc.spans.append(Span(cls, where, start, seconds, via))
        elif r["wall"] > since:  # nothing in the history says where it was before: not known, not "no route"
            inc.spans.append(Span(cls, UNKNOWN, since, r["wall"] - since, False))
        where, via = _where(r)
        opened[cls] = (where, via, r["wall"], r)
        last = r
    for cls, (where, via, start, began) in opened.items():
        if began is not None and last is not None:
            # To the last record of the period by its monotonic clock, then to `until` by the wall's.
            seconds = clock.between(began, last) + max(0.0, until - last["wall"])
        else:
            seconds = until - start
        inc.spans.append(Span(cls, where, start, seconds, via))
    inc.spans.sort(key=lambda s: (s.cls, s.start))
    inc.wall_only = clock.wall_only
    return inc


def select(records: Iterable[Mapping[str, Any]], since: float, until: float) -> list[dict[str, Any]]:
    """What `build` needs of a history for [since, until]: the records of the period, and before it the
    last decision of each class (where it was at `since`) and the last start (the boot it ran in)."""
    before: dict[tuple[str, str], dict[str, Any]] = {}
    within: list[dict[str, Any]] = []
    for r in records:
        wall = r.get("wall")
        if not isinstance(wall, int | float):
            continue
        if wall < since:
            if r.get("kind") == "decision":
                before[("decision", str(r.get("class")))] = dict(r)
            elif r.get("kind") == "start":
                before[("start", "")] = dict(r)
            elif r.get("kind") == "meter":  # the reading the period's first use is counted from
                before[("meter", str(r.get("uplink")))] = dict(r)
        elif wall <= until:
            within.append(dict(r))
    return sorted(before.values(), key=lambda r: r["wall"]) + within


# -- Markdown ------------------------------------------------------------------------------------------


def _dur(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _cause(r: Mapping[str, Any]) -> str:
    c = r.get("cause") or {}
    if not isinstance(c, dict) or not c:
        return ""
    text = f"`{c.get('code')}` {c.get('text', '')}".strip()
    # The evidence the text does not already spell out (it often does: "skipped fiber down").
    ev = {k: v for k, v in (c.get("evidence") or {}).items() if str(v) not in text}
    if ev:
        text += " (" + ", ".join(f"{k} {v}" for k, v in ev.items()) + ")"
    return _cell(text)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def markdown(inc: Incident) -> str:
    period = inc.until - inc.since
    title = f"# Incident report{' — ' + inc.site if inc.site else ''}"
    lines = [
        title,
        "",
        f"Period: {utc(inc.since)} – {utc(inc.until)} UTC ({_dur(period)}), {len(inc.records)} records.",
    ]
    if inc.first_record is not None and inc.first_record > inc.since:
        lines.append(
            f"The history holds nothing before {utc(inc.first_record)} UTC: "
            "what happened earlier is not in this report."
        )
    steps = [float(r.get("delta_s", 0.0)) for r in inc.by_kind("clock-step")]
    if steps:
        lines.append(
            f"The wall clock was stepped {len(steps)} time(s) in the period ({sum(steps):+.1f} s in all; see Clock): "
            "its length on the wall clock is not the time that passed; the times on each uplink are."
        )
    if inc.wall_only:
        lines.append("The daemon was restarted on a new boot in this period: some durations come from the wall clock.")
    lines += ["", "## Time on each uplink, per class", ""]
    on = inc.time_on()
    switches = inc.switches()
    rows = []
    for cls, per in on.items():
        no_route = sum(sp.seconds for sp in inc.spans if sp.cls == cls and sp.where in NO_ROUTE)
        parts = ", ".join(
            f"{w} {_dur(s)} ({100 * s / period:.0f} %)" for w, s in sorted(per.items(), key=lambda x: -x[1])
        )
        rows.append([cls, parts, _dur(no_route) if no_route else "0", str(switches.get(cls, 0))])
    lines += _table(["class", "where it was forwarded", "without a route", "switches"], rows)
    if inc.metered:
        lines += ["", "Metered uplinks: " + ", ".join(inc.metered) + "."]
        used = []
        for cls, per in on.items():
            for w, s in per.items():
                if w in inc.metered and s > 0:
                    used.append(f"{cls} {_dur(s)} on {w}")
        lines.append(("Time on them: " + "; ".join(used) + ".") if used else "No class used them.")
        for name, (rx, tx, last) in inc.metered_bytes().items():
            lines.append(
                f"Bytes on {name}: {tx} sent, {rx} received (its interface's counters, read last at {utc(last)} UTC)."
            )
    faults = inc.by_kind("uplink")
    lines += ["", "## Faults and recoveries seen", ""]
    if faults:
        lines += _table(
            ["time (UTC)", "uplink", "change", "cause and evidence"],
            [[utc(r["wall"]), r["uplink"], f"{r['from']} → {r['to']}", _cause(r)] for r in faults],
        )
    else:
        lines.append("None.")
    lines += ["", "## Decisions", ""]
    decisions = inc.by_kind("decision")
    if decisions:
        # "from" as the class was forwarded before: the record names only an uplink it left, not a route.
        was = dict(inc.at_since)
        rows = []
        for r in decisions:
            where = _where(r)[0]
            rows.append([utc(r["wall"]), r["class"], f"{was.get(r['class'], '-')} → {where}", _cause(r)])
            was[r["class"]] = where
        lines += _table(["time (UTC)", "class", "from → to", "why"], rows)
    else:
        lines.append("No class moved.")
    lines += ["", "## Alarms", ""]
    alarms = inc.by_kind("alarm")
    if alarms:
        rows = []
        raised: dict[str, float] = {}
        for r in alarms:
            state = r.get("state", "raised")
            what = state
            if state == "raised":
                raised[r.get("id", "")] = r["wall"]
            elif state == "acked":
                since = raised.get(r.get("id", ""))
                what = f"acknowledged by {r.get('by') or '?'}"
                if since is not None:
                    what += f", {_dur(r['wall'] - since)} after it was raised"
            elif state == "cleared" and r.get("id") in raised:
                what = f"cleared after {_dur(r['wall'] - raised.pop(r['id']))}"
            rows.append([utc(r["wall"]), r.get("id") or r["subject"], r["severity"], _cell(what), _cause(r)])
        lines += _table(["time (UTC)", "alarm", "severity", "what", "cause"], rows)
        if raised:
            lines.append("")
            lines.append("Raised in the period and still raised at its end: " + ", ".join(sorted(raised)) + ".")
    else:
        lines.append("None.")
    lines += ["", "## Operators", ""]
    ops = inc.by_kind("command", "reload", "remote-refused", "remote-refused-summary")
    if ops:
        rows = []
        for r in ops:
            if r["kind"] == "command":
                what = ("ok: " if r.get("ok") else "REFUSED: ") + str(r.get("text", ""))
                rows.append([utc(r["wall"]), str(r.get("by") or "-"), _cell(what)])
            elif r["kind"] == "reload":
                if r.get("ok"):
                    what = f"reload: {r.get('policy')} in force"
                else:
                    what = "reload REFUSED: " + "; ".join(r.get("problems") or [])
                rows.append([utc(r["wall"]), "-", _cell(what)])
            elif r["kind"] == "remote-refused":
                rows.append(
                    [utc(r["wall"]), str(r.get("key") or "-"), _cell(f"remote command refused: {r.get('reason')}")]
                )
            else:
                rows.append(
                    [utc(r["wall"]), "-", f"{r.get('refused')} remote commands refused in {r.get('interval_s')} s"]
                )
        lines += _table(["time (UTC)", "who", "what"], rows)
    else:
        lines.append("No operator command, reload or refused remote command.")
    lines += ["", "## Clock", ""]
    clock = inc.by_kind("clock", "clock-step")
    if clock:
        rows = []
        for r in clock:
            if r["kind"] == "clock":
                distrust = ", ".join(r.get("distrust") or []) or "nothing"
                rows.append([utc(r["wall"]), f"{r['from']} → {r['to']} (distrusts {distrust})", _cause(r)])
            else:
                how = "explained" if r.get("explained") else "UNEXPLAINED"
                rows.append(
                    [
                        utc(r["wall"]),
                        f"wall clock stepped {r.get('delta_s', 0):+.3f} s ({how})",
                        _cell(str(r.get("why", ""))),
                    ]
                )
        lines += _table(["time (UTC)", "verdict", "evidence"], rows)
    else:
        lines.append("No clock verdict changed.")
    backup = inc.by_kind("standby", "drill", "drill-check", "canary")
    if backup:
        lines += ["", "## Standby and drills", ""]
        rows = []
        for r in backup:
            if r["kind"] == "standby":
                rows.append([utc(r["wall"]), r["uplink"], r["action"], _cause(r)])
            elif r["kind"] == "drill":
                verdict = f" **{r['verdict']}**" if r.get("verdict") else ""
                rows.append([utc(r["wall"]), r["uplink"], f"drill {r['from']} → {r['to']}{verdict}", _cause(r)])
            elif r["kind"] == "canary":
                where = f"via {r['to']}" if r.get("to") else "unreachable"
                rows.append([utc(r["wall"]), r["uplink"], f"drill canary {where}", _cause(r)])
            else:
                value = "-" if r.get("value") is None else f"{r['value']:g} {r.get('unit', '')}".strip()
                rows.append(
                    [
                        utc(r["wall"]),
                        r["uplink"],
                        f"check {r['check']} {value} {'ok' if r['ok'] else 'FAILED'}",
                        _cause(r),
                    ]
                )
        lines += _table(["time (UTC)", "uplink", "what", "cause"], rows)
    starts = inc.by_kind("start", "restored")
    if starts:
        lines += ["", "## The daemon", ""]
        rows = []
        for r in starts:
            if r["kind"] == "start":
                adopted = r.get("adopted") or "nothing"
                rows.append(
                    [utc(r["wall"]), f"started (pid {r.get('pid')}, policy {r.get('policy')}); adopted {adopted}"]
                )
            else:
                added, removed = len(r.get("added") or []), len(r.get("removed") or [])
                rows.append([utc(r["wall"]), f"kernel state restored: {added} added, {removed} removed"])
        lines += _table(["time (UTC)", "what"], [[a, _cell(b)] for a, b in rows])
    return "\n".join(lines) + "\n"


# -- the plot ------------------------------------------------------------------------------------------

COLOURS = ["#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#8d6e63", "#9e9d24"]
NO_ROUTE_COLOUR = "#c62828"
UNKNOWN_COLOUR = "#bdbdbd"


def plot(inc: Incident, path: Any) -> None:
    """Each class's forwarding over the period as a lane of coloured spans, faults and alarms marked."""
    import matplotlib  # noqa: PLC0415 (heavy; only for --plot)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.patches import Rectangle  # noqa: PLC0415

    classes = list(dict.fromkeys(s.cls for s in inc.spans))
    uplinks = list(dict.fromkeys(s.where for s in inc.spans if s.via))
    colour = {u: COLOURS[i % len(COLOURS)] for i, u in enumerate(uplinks)}
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.7 * max(1, len(classes))))
    t0 = inc.since
    for i, cls in enumerate(classes):
        for s in inc.spans:
            if s.cls != cls:
                continue
            ax.broken_barh(
                [(s.start - t0, s.seconds)],
                (i - 0.35, 0.7),
                color=colour.get(s.where, UNKNOWN_COLOUR if s.where == UNKNOWN else NO_ROUTE_COLOUR),
            )
            if s.seconds > (inc.until - inc.since) / 20:
                ax.text(s.start - t0 + s.seconds / 2, i, s.where, ha="center", va="center", fontsize=7, color="white")
    for r in inc.by_kind("uplink"):
        if r["to"] in FAULTS:
            ax.axvline(r["wall"] - t0, color="#c62828", lw=0.8, ls=":")
            ax.text(
                r["wall"] - t0, len(classes) - 0.4, f"{r['uplink']} {r['to']}", fontsize=6, rotation=90, va="bottom"
            )
    for r in inc.by_kind("alarm"):
        ax.plot([r["wall"] - t0], [-0.6], marker="v", color="#f9a825" if r["severity"] != "critical" else "#c62828")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlim(0, inc.until - inc.since)
    ax.set_ylim(-0.9, len(classes) + 0.8)
    ax.set_xlabel(f"seconds after {utc(inc.since)} UTC (▼ alarms, dotted: faults)")
    ax.set_title(f"Incident{' at ' + inc.site if inc.site else ''}: where each class was forwarded", loc="left")
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in [*colour.values(), NO_ROUTE_COLOUR, UNKNOWN_COLOUR]]
    ax.legend(handles, [*colour, "no route", UNKNOWN], loc="upper right", fontsize=7, ncol=len(handles))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
