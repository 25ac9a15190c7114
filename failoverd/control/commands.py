"""The operator command table: one entry per command, each validating its arguments before acting.

Requests and replies are JSON objects. A request names `cmd` and its arguments; a reply always has
`ok`, and `error` with the reason when ok is false. The same table serves the unix socket and (later)
MQTT, so a command means the same thing whichever way it arrives.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from failoverd.engine import events as ev
from failoverd.engine.decide import drained, usable
from failoverd.engine.explain import UnknownClass
from failoverd.engine.explain import explain as explain_class
from failoverd.engine.state import EngineState, TargetState
from failoverd.policy.model import Policy
from failoverd.policy.schema import parse_duration
from failoverd.probes.base import ProbeStats

if TYPE_CHECKING:
    from failoverd.runtime import Daemon


class BadRequest(Exception):
    """A malformed or impossible request; the message is the reason given to the operator."""


Handler = Callable[["Daemon", dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    args: dict[str, type | tuple[type, ...]]  # allowed arguments and their JSON types
    required: tuple[str, ...]
    handler: Handler
    help: str


def _wall(mono: float) -> float:
    """A monotonic instant as wall-clock seconds, for display only."""
    return time.time() - (time.monotonic() - mono)


def _duration(value: Any, what: str) -> float | None:
    if value is None:
        return None
    try:
        parsed = parse_duration(value)
    except ValueError as exc:
        raise BadRequest(f"{what}: {exc}") from None
    if not isinstance(parsed, float):
        raise BadRequest(f"{what}: expected a duration such as 30m")
    return parsed


def uplink_rows(
    policy: Policy, state: EngineState, stats: Mapping[tuple[str, str], ProbeStats]
) -> list[dict[str, Any]]:
    rows = []
    for name, spec in policy.uplinks.items():
        u = state.uplinks[name]
        samples = [s for p in spec.probes for s in u.targets.get(p.key, TargetState()).samples]
        rtts = [s.rtt for s in samples if s.ok and s.rtt is not None]
        rows.append(
            {
                "name": name,
                "interface": spec.interface,
                "kind": spec.kind,
                "carrier_name": spec.operator,
                "state": u.status,
                "usable": usable(state, name),
                "suppressed": u.suppressed,
                "penalty": round(u.penalty, 1),
                "drained": drained(state, name) is not None,
                "carrier": u.carrier,
                "rtt_ms": round(1000 * sum(rtts) / len(rtts), 2) if rtts else None,
                "loss_percent": round(100 * sum(1 for s in samples if not s.ok) / len(samples), 1) if samples else None,
                "since": _wall(u.since),
                "age_s": round(state.now - u.since, 1),
                "cause": u.cause.as_dict(),
                "targets": [
                    {
                        "probe": p.key,
                        "failed": u.targets.get(p.key, TargetState()).failed,
                        "losses": u.targets.get(p.key, TargetState()).losses,
                        "successes": u.targets.get(p.key, TargetState()).successes,
                        "why": u.targets.get(p.key, TargetState()).failed_cause,
                        "last_detail": stats.get((name, p.key), ProbeStats()).detail,
                        "probes": stats.get((name, p.key), ProbeStats()).done,  # completed since start
                    }
                    for p in spec.probes
                ],
            }
        )
    return rows


def class_rows(policy: Policy, state: EngineState) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "uplink": c.uplink,
            "route": c.route,
            "path": list(policy.classes[name].path),
            "since": _wall(c.since),
            "age_s": round(state.now - c.since, 1),
            "cause": c.cause.as_dict(),
            "override": c.by_override,
        }
        for name, c in state.classes.items()
        if name in policy.classes
    ]


def override_rows(state: EngineState) -> list[dict[str, Any]]:
    return [
        {
            "id": o.id,
            "kind": o.kind,
            "class": o.cls,
            "uplink": o.uplink,
            "reason": o.reason,
            "by": o.by,
            "force": o.force,
            "expires_in_s": round(o.expires - time.monotonic(), 1),
        }
        for o in state.overrides
    ]


async def status(d: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    st = d.state
    return {
        "ok": True,
        "site": d.policy.site,
        "policy": d.policy.source,
        "pid": _pid(),
        "uptime_s": round(time.monotonic() - d.started, 1),
        "uplinks": uplink_rows(d.policy, st, d.probe_stats),
        "classes": class_rows(d.policy, st),
        "overrides": override_rows(st),
        "clock": {"state": st.clock.state.value, "bound_s": st.clock.bound, "evidence": list(st.clock.evidence)},
    }


def _pid() -> int:
    import os  # noqa: PLC0415

    return os.getpid()


async def failover(d: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    event = ev.ForceClass(
        request=d.next_request(),
        cls=args["class"],
        uplink=args["to"],
        reason=args.get("reason", ""),
        ttl=_duration(args.get("for"), "for"),
        force=bool(args.get("force", False)),
        by=str(args.get("by", "failoverctl")),
    )
    return _reply(await d.command(event))


async def drain(d: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    event = ev.DrainUplink(
        request=d.next_request(),
        uplink=args["uplink"],
        reason=args.get("reason", ""),
        ttl=_duration(args.get("for"), "for"),
        force=bool(args.get("force", False)),
        by=str(args.get("by", "failoverctl")),
    )
    return _reply(await d.command(event))


async def release(d: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    if not args.get("all") and not args.get("override"):
        raise BadRequest("name an override (o1, o2, …) or ask for all")
    override = None if args.get("all") else str(args["override"])
    return _reply(await d.command(ev.Release(d.next_request(), override, str(args.get("by", "failoverctl")))))


def _reply(r: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": r.ok, "text": r.text, "changes": list(r.changes)}
    if r.override:
        out["override"] = r.override
    if not r.ok:
        out["error"] = r.text
    return out


async def explain(d: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    try:
        chain = explain_class(d.policy, d.state, args["class"])
    except UnknownClass as exc:
        raise BadRequest(str(exc)) from None
    return {"ok": True, "class": args["class"], "chain": chain}


async def history(d: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    n = args.get("last", 20)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise BadRequest("last must be a positive whole number")
    return {"ok": True, "records": d.journal.last(n)}


async def clock(d: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    if d.clock is None:
        return {"ok": True, "state": d.state.clock.state.value, "sources": [], "steps": [], "evidence": []}
    return {"ok": True, **d.clock.report()}


async def reload(d: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    out = await d.reload()
    if not out.get("ok"):
        out.setdefault("error", out.get("text"))
    return out


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("status", {}, (), status, "uplinks, classes, overrides, clock"),
        Command(
            "failover",
            {"class": str, "to": str, "for": (str, int, float), "reason": str, "force": bool, "by": str},
            ("class", "to", "reason"),
            failover,
            "put a class on an uplink for a while",
        ),
        Command(
            "drain",
            {"uplink": str, "for": (str, int, float), "reason": str, "force": bool, "by": str},
            ("uplink", "reason"),
            drain,
            "move every class off an uplink for a while",
        ),
        Command("release", {"override": str, "all": bool, "by": str}, (), release, "end an override, or all"),
        Command("explain", {"class": str}, ("class",), explain, "why a class is where it is"),
        Command("history", {"last": int}, (), history, "recent decisions and events"),
        Command("reload", {}, (), reload, "validate and load the policy file again"),
        Command("clock", {}, (), clock, "the clock's verdict, each time source, recent steps"),
    )
}


async def dispatch(d: Daemon, request: Any) -> dict[str, Any]:
    """Validate a request against the table and run it; every refusal names its reason."""
    if not isinstance(request, dict):
        return {"ok": False, "error": "a request is a JSON object with a cmd"}
    name = request.get("cmd")
    cmd = COMMANDS.get(name) if isinstance(name, str) else None
    if cmd is None:
        return {"ok": False, "error": f"unknown command {name!r} (commands: {', '.join(COMMANDS)})"}
    args = {k: v for k, v in request.items() if k != "cmd"}
    for key, value in args.items():
        if key not in cmd.args:
            return {
                "ok": False,
                "error": f"{cmd.name}: unknown argument {key!r} (takes: {', '.join(cmd.args) or 'none'})",
            }
        want = cmd.args[key]
        if not isinstance(value, want) or (
            isinstance(value, bool) and want is not bool and bool not in (want if isinstance(want, tuple) else (want,))
        ):
            return {"ok": False, "error": f"{cmd.name}: argument {key!r} has the wrong type"}
    missing = [k for k in cmd.required if k not in args]
    if missing:
        return {"ok": False, "error": f"{cmd.name}: missing {', '.join(missing)}"}
    try:
        return await cmd.handler(d, args)
    except BadRequest as exc:
        return {"ok": False, "error": str(exc)}
    except TimeoutError:
        return {"ok": False, "error": f"{cmd.name}: the engine did not answer in time"}
