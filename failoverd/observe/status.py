"""The status document: what the gateway does now, as operators read it (failoverctl, MQTT, metrics)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from failoverd.engine.decide import drained, usable
from failoverd.engine.drills import canary_routes
from failoverd.engine.drillstate import Check
from failoverd.engine.redundancy import last_verified, redundancy
from failoverd.engine.state import EngineState, TargetState
from failoverd.policy.model import Policy
from failoverd.probes.base import ProbeStats


def _wall(mono: float) -> float:
    """A monotonic instant as wall-clock seconds, for display only."""
    return time.time() - (time.monotonic() - mono)


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
                "family": spec.family,  # 4 or 6; None: point-to-point, both on one judgement
                "base": spec.file_name,  # the policy file's name: NAME for NAME/v6
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
                "verified_age_s": _age(state.now, last_verified(u, state.now)),
                "verify_stale": u.verify_stale,
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


def modem_rows(policy: Policy, state: EngineState) -> list[dict[str, Any]]:
    """Per cellular uplink with profiles: its profile and phase, and the modem's last evidence (ModemManager)."""
    rows = []
    for name, v in state.modems.items():
        spec = policy.uplinks.get(name)
        if spec is None or spec.modem is None:
            continue
        rows.append(
            {
                "uplink": name,
                "equipment": spec.modem.equipment,
                "profile": v.profile,
                "phase": v.phase.value,
                "target": v.target,
                "registration": v.registration,
                "operator": v.operator,
                "access": v.access,
                "signal": v.signal,
                "bearer": v.bearer,
                "age_s": round(state.now - v.since, 1),
                "cause": v.cause.as_dict(),
            }
        )
    return rows


def _age(now: float, then: float | None) -> float | None:
    return None if then is None else round(now - then, 1)


def class_rows(policy: Policy, state: EngineState) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "uplink": c.uplink,
            "route": c.route,
            "path": list(policy.classes[name].path),
            "family": policy.classes[name].family,
            "base": policy.classes[name].file_name,
            "since": _wall(c.since),
            "age_s": round(state.now - c.since, 1),
            "cause": c.cause.as_dict(),
            "override": c.by_override,
            "redundancy": redundancy(policy.classes[name], policy, state).as_dict() | {"alarm": c.exposed},
        }
        for name, c in state.classes.items()
        if name in policy.classes
    ]


def override_rows(state: EngineState, now: float) -> list[dict[str, Any]]:
    return [
        {
            "id": o.id,
            "kind": o.kind,
            "class": o.cls,
            "uplink": o.uplink,
            "profile": o.profile,
            "reason": o.reason,
            "by": o.by,
            "force": o.force,
            "expires_in_s": round(o.expires - now, 1),
        }
        for o in state.overrides
    ]


def redundancy_summary(policy: Policy, state: EngineState) -> dict[str, dict[str, Any]]:
    """Per class: usable uplinks, known-good cold standby, and whether the last-uplink alarm is up (MQTT)."""
    out: dict[str, dict[str, Any]] = {}
    for name, spec in policy.classes.items():
        r = redundancy(spec, policy, state)
        c = state.classes.get(name)
        out[name] = {"usable": len(r.usable), "standby": len(r.standby), "alarm": c is not None and c.exposed}
    return out


def drill_rows(policy: Policy, state: EngineState, now: float) -> list[dict[str, Any]]:
    """`failoverctl drill status`: each drilled uplink's schedule, the running drill, the last result."""
    rows = []
    for name, spec in policy.drills.items():
        sch = state.drills.get(name)
        run = state.drill if state.drill is not None and state.drill.uplink == name else None
        when = (
            f"every {spec.every:g}s" if spec.every is not None else f"window {spec.window.text if spec.window else '?'}"
        )
        row: dict[str, Any] = {
            "uplink": name,
            "schedule": when,
            "offset_s": round(spec.offset, 1),
            "running": None,
            "due_in_s": None,
            "postponed": None,
            "last": None,
            "verified_age_s": None,
            "verified": False,
        }
        if run is not None:
            row["running"] = {
                "phase": run.phase.value,
                "by": run.by,
                "age_s": round(now - run.started, 1),
                "bytes": run.bytes,
                "rounds": min((run.results.get(p.key, 0) for p in policy.uplinks[name].probes), default=0),
                "checks": [_check(c) for c in run.checks],
            }
            if spec.canary is not None:
                row["running"]["canary_rounds"] = run.canary_results
                row["running"]["canary_lost"] = run.canary_lost
        if spec.canary is not None:
            c = spec.canary
            via = canary_routes(policy, state.drill).get(name)
            row["canary"] = {
                "kind": c.probe.kind,
                "target": c.probe.target,
                "port": c.probe.port,
                "rounds": c.rounds,
                "table": c.table,
                "fwmark": f"{c.fwmark:#x}",
                "route": f"via {via}" if via is not None else "unreachable",
            }
        if sch is not None:
            row["due_in_s"] = None if sch.due_at is None else round(sch.due_at - now, 1)
            row["postponed"] = sch.postponed
            if sch.last is not None:
                row["last"] = {
                    "verdict": sch.last.verdict,
                    "age_s": round(now - sch.last.at, 1),
                    "cause": sch.last.cause.as_dict(),
                    "checks": [_check(c) for c in sch.last.checks],
                }
            if sch.verified_at is not None:
                row["verified_age_s"] = round(now - sch.verified_at, 1)
                row["verified"] = now - sch.verified_at < spec.valid_for  # as redundancy.known_good
        rows.append(row)
    return rows


def _check(c: Check) -> dict[str, Any]:
    return {"check": c.name, "value": None if c.value is None else round(c.value, 3), "unit": c.unit, "ok": c.ok}
