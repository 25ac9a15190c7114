"""The operator command table: each command declared once, for failoverctl, the socket, MQTT and the simulator.

A request is a JSON object naming `cmd` and its arguments; a reply always has `ok`, and `error` with
the reason when ok is false. `failoverctl` builds its argument parser from this table, the socket
refuses a `mutating` command to a reader, MQTT dispatches through it, and the simulator's timeline
turns its `command:` steps into engine events with `to_event`. So a command means the same thing
whichever way it arrives.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from failoverd.control.api import Gateway, OperatorCommand
from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.explain import UnknownClass, explain
from failoverd.engine.state import Override
from failoverd.observe.status import drill_rows
from failoverd.policy.durations import parse_duration
from failoverd.policy.model import Policy

HISTORY_ALL = 1_000_000  # every record the history holds (it keeps a bounded number)


class BadRequest(Exception):
    """A malformed or impossible request; the message is the reason given to the operator."""


ArgKind = Literal["str", "bool", "int", "duration"]
_JSON_TYPES: dict[ArgKind, tuple[type, ...]] = {
    "str": (str,),
    "bool": (bool,),
    "int": (int,),
    "duration": (str, int, float),  # 30m, 90, 1.5
}


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument: its JSON key, its type, and how failoverctl takes it."""

    key: str
    kind: ArgKind
    help: str
    required: bool = False
    default: str | int | bool | None = None
    # positional or --KEY on failoverctl's command line; "filled" is set by the client (who sent it)
    cli: Literal["positional", "option", "filled"] = "option"
    metavar: str | None = None


Handler = Callable[[Gateway, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    mutating: bool  # changes what the gateway does: refused to read-only clients of the socket
    handler: Handler
    args: tuple[Arg, ...] = ()
    one_of: tuple[str, ...] = ()  # at least one of these arguments must be given
    one_of_text: str = ""

    def arg(self, key: str) -> Arg | None:
        return next((a for a in self.args if a.key == key), None)


def _duration(value: Any, what: str) -> float | None:
    if value is None:
        return None
    try:
        parsed = parse_duration(value)
    except ValueError as exc:
        raise BadRequest(f"{what}: {exc}") from None
    # NaN passes every comparison the engine makes (positive, at most max_override): an override for ever.
    if not isinstance(parsed, float) or not math.isfinite(parsed):
        raise BadRequest(f"{what}: expected a duration such as 30m")
    return parsed


def to_event(name: str, args: dict[str, Any], request: str = "") -> OperatorCommand:
    """The engine event of a state-changing command whose arguments `validate` accepted."""
    by = str(args.get("by", "failoverctl"))
    ttl = _duration(args.get("for"), "for")
    force = bool(args.get("force", False))
    match name:
        case "failover":
            return ev.ForceClass(request, args["class"], args["to"], args.get("reason", ""), ttl, force, by)
        case "drain":
            return ev.DrainUplink(request, args["uplink"], args.get("reason", ""), ttl, force, by)
        case "modem-use":
            return ev.PinProfile(request, args["uplink"], args["profile"], args.get("reason", ""), ttl, force, by)
        case "release":
            return ev.Release(request, None if args.get("all") else str(args["override"]), by)
        case "drill-run":
            return ev.RunDrill(request, args["uplink"], by)
        case "ack":
            return ev.AckAlarm(request, args["alarm"], args.get("reason", ""), by)
    raise BadRequest(f"{name} is not a command that the engine takes")


def to_events(
    policy: Policy,
    name: str,
    args: dict[str, Any],
    request: str = "",
    *,
    overrides: Iterable[Override] = (),
    group: str = "",
) -> list[OperatorCommand]:
    """The engine events of a command, with names as the policy file gives them: a dual-stack class or
    uplink (policy/compile.py) stands for both its twins. `failover voice --to mobile` puts voice on
    mobile and voice/v6 on mobile/v6; `drain fiber` drains fiber and fiber/v6; a twin's own name
    (`fiber/v6`) is that twin alone. The twins' events carry `group` (else `request`): `release o1`,
    where o1 is one of the two overrides such a command made, releases both (`overrides`: those in
    force). Anything else is one event, as to_event makes it."""
    one = to_event(name, args, request)
    if isinstance(one, ev.Release) and one.override is not None:
        return [replace(one, override=o) for o in twin_overrides(tuple(overrides), one.override)]
    if isinstance(one, ev.ForceClass):
        classes = policy.class_twins(one.cls)
        if not classes or not policy.uplink_twins(one.uplink):
            return [one]  # an unknown class or uplink: the engine says so
        out: list[OperatorCommand] = []
        for cls in classes:
            family = policy.classes[cls].family
            to = policy.twin(one.uplink, family) if family is not None else one.uplink
            if to is None:
                raise BadRequest(f'uplink "{one.uplink}" carries no IPv{family}: class "{cls}" cannot go there')
            out.append(replace(one, cls=cls, uplink=to, group=(group or request) if len(classes) > 1 else None))
        return out
    if isinstance(one, ev.DrainUplink):
        twins = policy.uplink_twins(one.uplink)
        return [replace(one, uplink=u, group=(group or request) if len(twins) > 1 else None) for u in twins] or [one]
    return [one]


def twin_overrides(overrides: tuple[Override, ...], oid: str) -> list[str]:
    """`oid` and the overrides made with it by one command (a dual-stack class's or uplink's twins share
    a `group`); `oid` alone otherwise, also when it is not in force (the engine says so)."""
    mine = next((o for o in overrides if o.id == oid), None)
    if mine is None or mine.group is None:
        return [oid]
    return [oid, *(o.id for o in overrides if o.id != oid and o.group == mine.group)]


def _reply(r: fx.CommandReply) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": r.ok, "text": r.text, "changes": list(r.changes)}
    if r.override:
        out["override"] = r.override
    if not r.ok:
        out["error"] = r.text
    return out


async def _status(g: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, **g.status()}


async def _to_engine(g: Gateway, args: dict[str, Any], name: str) -> dict[str, Any]:
    # The group of a dual-stack command's twins: unique within this boot, as the overrides it is kept with.
    group = f"g{time.monotonic_ns()}"
    events = to_events(g.policy, name, args, overrides=g.state.overrides, group=group)
    replies = [await g.submit(e) for e in events]
    if len(replies) == 1:
        return _reply(replies[0])
    # Both twins of a dual-stack class or uplink: each is its own override, said one after the other;
    # ok when either took (the text says which did not).
    out = _reply(replace(replies[0], ok=any(r.ok for r in replies), text="; ".join(r.text for r in replies)))
    out["changes"] = [c for r in replies for c in r.changes]
    out["overrides"] = [r.override for r in replies if r.override]
    if not out["ok"]:
        out["error"] = out["text"]
    return out


async def _failover(g: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    return await _to_engine(g, args, "failover")


async def _drain(g: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    return await _to_engine(g, args, "drain")


async def _modem_use(g: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    return await _to_engine(g, args, "modem-use")


async def _release(g: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    return await _to_engine(g, args, "release")


async def _explain(g: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    try:
        # A dual-stack class by its file's name: the chain of each family's twin, IPv4 first.
        chain = [
            line
            for cls in g.policy.class_twins(args["class"]) or (args["class"],)
            for line in explain(g.policy, g.state, cls)
        ]
    except UnknownClass as exc:
        raise BadRequest(str(exc)) from None
    return {"ok": True, "class": args["class"], "chain": chain}


async def _alarms(g: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    now = time.monotonic()
    order = {"critical": 0, "warning": 1, "info": 2}
    active = sorted(g.state.alarms.values(), key=lambda a: (order[a.severity], a.raised))  # worst, then oldest
    return {"ok": True, "alarms": [a.as_dict(now) for a in active]}


async def _ack(g: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    return await _to_engine(g, args, "ack")


async def _history(g: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    if args["last"] < 1:
        raise BadRequest("last must be a positive whole number")
    return {"ok": True, "records": g.history(args["last"])}


async def _report(g: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    from failoverd import report  # noqa: PLC0415

    now = time.time()
    try:
        since = report.parse_when(args["since"], now)
        until = report.parse_when(args["until"], now)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if until <= since:
        raise BadRequest("the period is empty: --until must be after --since")
    metered = [n for n, u in g.policy.uplinks.items() if u.metered]
    if until >= now - 1.0:  # the period ends now: the bytes up to now, not up to the last reading
        await g.read_meters()
        until = max(until, time.time())
    records = report.select(g.history(HISTORY_ALL), since, until)
    return {"ok": True, "site": g.policy.site, "since": since, "until": until, "metered": metered, "records": records}


async def _clock(g: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, **g.clock_report()}


async def _drill_status(g: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "drills": drill_rows(g.policy, g.state, time.monotonic())}


async def _drill_run(g: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    return await _to_engine(g, args, "drill-run")


async def _reload(g: Gateway, args: dict[str, Any]) -> dict[str, Any]:
    out = await g.reload()
    if not out.get("ok"):
        out.setdefault("error", out.get("text"))
    return out


_REASON = Arg("reason", "str", "why (kept in the history and shown in status)", required=True)
_FOR = Arg("for", "duration", "how long, e.g. 30m (default 1h, capped by the policy)", metavar="DURATION")
_BY = Arg("by", "str", "who asked (set by failoverctl and by MQTT from the key)", cli="filled")

COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("status", "uplinks, classes, overrides, clock", False, _status),
        Command(
            "failover",
            "put a class on an uplink for a while",
            True,
            _failover,
            (
                Arg("class", "str", "the class to move", required=True, cli="positional", metavar="CLASS"),
                Arg("to", "str", "the uplink to put it on", required=True, metavar="UPLINK"),
                _FOR,
                _REASON,
                Arg("force", "bool", "even onto an uplink that is down"),
                _BY,
            ),
        ),
        Command(
            "drain",
            "move every class off an uplink for a while",
            True,
            _drain,
            (
                Arg("uplink", "str", "the uplink to drain", required=True, cli="positional", metavar="UPLINK"),
                _FOR,
                _REASON,
                Arg("force", "bool", "even if a class is left with no uplink"),
                _BY,
            ),
        ),
        # failoverctl shows it as `modem use UPLINK --profile NAME`
        Command(
            "modem-use",
            "keep a cellular uplink's modem on one profile for a while",
            True,
            _modem_use,
            (
                Arg("uplink", "str", "the cellular uplink", required=True, cli="positional", metavar="UPLINK"),
                Arg("profile", "str", "the profile to use (as the policy names it)", required=True, metavar="NAME"),
                _FOR,
                _REASON,
                Arg("force", "bool", "even a profile the engine holds failed"),
                _BY,
            ),
        ),
        Command(
            "release",
            "end an override, or all",
            True,
            _release,
            (
                Arg("override", "str", "the override's id (o1, o2, …)", cli="positional", metavar="OVERRIDE"),
                Arg("all", "bool", "every override"),
                _BY,
            ),
            one_of=("override", "all"),
            one_of_text="name an override (o1, o2, …) or ask for all",
        ),
        Command(
            "explain",
            "why a class is where it is",
            False,
            _explain,
            (Arg("class", "str", "the class", required=True, cli="positional", metavar="CLASS"),),
        ),
        Command(
            "history",
            "recent decisions and events",
            False,
            _history,
            (Arg("last", "int", "how many records (default 20)", default=20, metavar="N"),),
        ),
        Command(
            "report",
            "incident report of a period (Markdown; --plot PNG)",
            False,
            _report,
            (
                Arg("since", "str", "from: a span ago (2h), a Unix time or 2026-12-02T10:00 UTC", default="24h"),
                Arg("until", "str", "to (default now)", default="now"),
            ),
        ),
        Command("alarms", "active alarms and who acknowledged them", False, _alarms),
        Command(
            "ack",
            "acknowledge an active alarm",
            True,
            _ack,
            (
                # "alarm", not "id": a request's `id` is its own, for matching the reply (MQTT)
                Arg(
                    "alarm",
                    "str",
                    "the alarm's id, as `alarms` lists it",
                    required=True,
                    cli="positional",
                    metavar="ID",
                ),
                _REASON,
                _BY,
            ),
        ),
        Command("reload", "validate and load the policy file again", True, _reload),
        Command("clock", "the clock's verdict, each time source, recent steps", False, _clock),
        # failoverctl shows these two as `drill status` and `drill run UPLINK` (the part before the dash)
        Command("drill-status", "each drilled backup: schedule, running drill, last verdict", False, _drill_status),
        Command(
            "drill-run",
            "drill a backup uplink now (refused when unsafe)",
            True,
            _drill_run,
            (
                Arg("uplink", "str", "the uplink to drill", required=True, cli="positional", metavar="UPLINK"),
                _BY,
            ),
        ),
    )
}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    """A JSON number as a float, refused if it overflows to infinity (1e400 is valid JSON)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def decode_request(data: bytes | bytearray | str) -> Any:
    """The JSON value of a request as it arrived (socket line, MQTT payload), or BadRequest with the reason.

    Strict JSON: NaN and Infinity are refused (a NaN `issued` or `for` compares false with everything),
    and so is what Python's decoder rejects beyond JSONDecodeError: text that is not UTF-8, nesting
    deeper than the interpreter's stack, an integer of more than 4300 digits."""
    try:
        return json.loads(data, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"not JSON: {exc.msg} at column {exc.colno}") from None
    except UnicodeDecodeError:
        raise BadRequest("not JSON: not UTF-8 text") from None
    except RecursionError:
        raise BadRequest("not JSON: nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"not JSON: {str(exc).split(';', 1)[0]}") from None


def validate(request: Any) -> tuple[Command, dict[str, Any]]:
    """The command a request names and its arguments (defaults filled in), or BadRequest with the reason."""
    if not isinstance(request, dict):
        raise BadRequest("a request is a JSON object with a cmd")
    name = request.get("cmd")
    cmd = COMMANDS.get(name) if isinstance(name, str) else None
    if cmd is None:
        raise BadRequest(f"unknown command {name!r} (commands: {', '.join(COMMANDS)})")
    args = {k: v for k, v in request.items() if k != "cmd"}
    for key, value in args.items():
        arg = cmd.arg(key)
        if arg is None:
            raise BadRequest(
                f"{cmd.name}: unknown argument {key!r} (takes: {', '.join(a.key for a in cmd.args) or 'none'})"
            )
        # bool is an int in Python, never in a request
        if not isinstance(value, _JSON_TYPES[arg.kind]) or (isinstance(value, bool) and arg.kind != "bool"):
            raise BadRequest(f"{cmd.name}: argument {key!r} has the wrong type")
    missing = [a.key for a in cmd.args if a.required and a.key not in args]
    if missing:
        raise BadRequest(f"{cmd.name}: missing {', '.join(missing)}")
    if cmd.one_of and not any(args.get(k) for k in cmd.one_of):
        raise BadRequest(cmd.one_of_text)
    for a in cmd.args:
        if a.default is not None:
            args.setdefault(a.key, a.default)
    if "for" in args:
        _duration(args["for"], "for")  # refused here, not after the engine was asked
    return cmd, args


async def dispatch(g: Gateway, request: Any, *, may_change: bool = True) -> dict[str, Any]:
    """Validate a request against the table and run it; every refusal names its reason."""
    try:
        cmd, args = validate(request)
    except BadRequest as exc:
        return {"ok": False, "error": str(exc)}
    if cmd.mutating and not may_change:
        return {"ok": False, "error": f"{cmd.name} changes what the gateway does: this client may only read"}
    try:
        return await cmd.handler(g, args)
    except BadRequest as exc:
        return {"ok": False, "error": str(exc)}
    except TimeoutError:
        return {"ok": False, "error": f"{cmd.name}: the engine did not answer in time"}
