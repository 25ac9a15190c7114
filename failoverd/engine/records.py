"""History records: one shape for the daemon's journal, `failoverctl history` and `failoverd simulate`."""

from __future__ import annotations

from typing import Any

from failoverd.engine import effects as fx


def effect_record(e: fx.Effect) -> dict[str, Any] | None:
    """The history's view of an effect; None for effects that are not history."""
    match e:
        case fx.SwitchClass():
            return {
                "kind": "decision",
                "class": e.cls,
                "from": e.from_uplink,
                "uplink": e.to_uplink,
                "route": e.route,
                "cause": e.cause.as_dict(),
            }
        case fx.UplinkChanged():
            return {"kind": "uplink", "uplink": e.uplink, "from": e.old, "to": e.new, "cause": e.cause.as_dict()}
        case fx.Alarm():
            alarm: dict[str, Any] = {"kind": "alarm", "state": e.state, "severity": e.severity, "subject": e.subject}
            if e.id:
                alarm["id"] = e.id
            if e.by:
                alarm["by"] = e.by
            if e.level:
                alarm["level"] = e.level
            return {**alarm, "cause": e.cause.as_dict()}
        case fx.CommandReply():
            return {
                "kind": "command",
                "request": e.request,
                "by": e.by,
                "ok": e.ok,
                "text": e.text,
                "changes": list(e.changes),
            }
        case fx.ClockReaction():
            return {
                "kind": "clock",
                "from": e.old,
                "to": e.new,
                "distrust": sorted(e.distrust),
                "cause": e.cause.as_dict(),
            }
        case fx.FlushConntrack():
            return {"kind": "conntrack", "class": e.cls, "uplink": e.uplink}
        case fx.ActivateStandby() | fx.DeactivateStandby():
            action = "activate" if isinstance(e, fx.ActivateStandby) else "deactivate"
            return {"kind": "standby", "uplink": e.uplink, "action": action, "cause": e.cause.as_dict()}
        case fx.DrillChanged():
            out: dict[str, Any] = {
                "kind": "drill",
                "uplink": e.uplink,
                "from": e.old,
                "to": e.new,
                "cause": e.cause.as_dict(),
            }
            if e.verdict is not None:
                out["verdict"] = e.verdict
                out["deactivated"] = e.deactivated
            return out
        case fx.DrillCheck():
            return {
                "kind": "drill-check",
                "uplink": e.uplink,
                "check": e.check,
                "value": None if e.value is None else round(e.value, 3),
                "unit": e.unit,
                "ok": e.ok,
                "cause": e.cause.as_dict(),
            }
        case fx.DrillPostponed():
            return {
                "kind": "drill-postponed",
                "uplink": e.uplink,
                "retry_mono": None if e.retry_at is None else round(e.retry_at, 6),
                "cause": e.cause.as_dict(),
            }
        case fx.RouteCanary():
            return {
                "kind": "canary",
                "uplink": e.uplink,
                "route": "via" if e.via is not None else "unreachable",
                "to": e.via,
                "cause": e.cause.as_dict(),
            }
        case fx.SwitchProfile():
            return {
                "kind": "profile-switch",
                "uplink": e.uplink,
                "profile": e.profile,
                "how": e.how,
                "plmn": e.plmn,
                "cause": e.cause.as_dict(),
            }
        case fx.ProfileChanged():
            return {
                "kind": "profile",
                "uplink": e.uplink,
                "profile": e.profile,
                "from": e.old,
                "to": e.new,
                "cause": e.cause.as_dict(),
            }
        case fx.WithdrawClass():
            return {
                "kind": "decision",
                "class": e.cls,
                "uplink": None,
                "route": "withdrawn",
                "cause": e.cause.as_dict(),
            }
    return None


def note_record(text: str) -> dict[str, Any]:
    """A line of commentary in a timeline (`note:`): the simulator's only record no effect makes."""
    return {"kind": "note", "text": text}


def stamped(record: dict[str, Any], wall: float, mono: float) -> dict[str, Any]:
    """A record as the history keeps it: when (wall clock, as evidence; monotonic, for every timer) first."""
    return {"wall": round(wall, 6), "mono": round(mono, 6), **record}
