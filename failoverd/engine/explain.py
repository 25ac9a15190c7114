"""A class's chain of evidence: why it is where it is, read from the engine state alone."""

from __future__ import annotations

from failoverd.engine.decide import candidate, choose, drained
from failoverd.engine.drills import canary_routes
from failoverd.engine.redundancy import last_verified, redundancy
from failoverd.engine.state import EngineState, TargetState
from failoverd.policy.model import Policy


class UnknownClass(Exception):
    """The policy has no such class; the message is the refusal given to the operator."""


def explain(policy: Policy, state: EngineState, cls: str) -> list[str]:
    """The lines `failoverctl explain` shows for a class."""
    spec = policy.classes.get(cls)
    c = state.classes.get(cls)
    if spec is None or c is None:
        raise UnknownClass(f'unknown class "{cls}" (classes: {", ".join(policy.classes)})')
    now = state.now
    chain: list[str] = []
    where = f"via {c.uplink}" if c.route == "via" else c.route
    chain.append(f"class {cls} is {where} since {round(now - c.since, 1)}s ago: {c.cause}")
    for k, v in c.cause.evidence:
        chain.append(f"  evidence {k}: {v}")
    forced = state.active_override("force", cls)
    if forced is not None:
        chain.append(f"override {forced.describe()}, {round(forced.expires - now)}s left")
    chain.append(
        f"path: {' > '.join(spec.path)}"
        + (f"; revertive after {spec.preempt_delay:g}s" if spec.revertive else "; non-revertive")
    )
    for name in spec.path:
        u = state.uplinks[name]
        up = policy.uplinks[name]
        flags = []
        if not up.admits(cls):
            flags.append("does not admit this class")
        if drained(state, name):
            flags.append("drained")
        if u.suppressed:
            flags.append(f"damped, penalty {u.penalty:.0f}")
        extra = f" [{'; '.join(flags)}]" if flags else ""
        chain.append(f"  {name}: {u.status}{extra} since {round(now - u.since, 1)}s — {u.cause}")
        for p in up.probes:
            t = u.targets.get(p.key, TargetState())
            verdict = f"FAILED ({t.failed_cause})" if t.failed else "ok"
            chain.append(f"    probe {p.key}: {verdict}, {t.losses} losses / {t.successes} successes in a row")
    r = redundancy(spec, policy, state)
    ask = spec.redundancy
    line = f"redundancy: {r.describe()}"
    if ask.alarm is not None:
        line += f"; {ask.alarm} alarm on the last uplink" + (" (raised)" if c.exposed else "")
    if ask.prewarm:
        line += "; pre-warms cold standby"
    chain.append(line)
    for name in (*r.standby, *r.unproven):
        seen = last_verified(state.uplinks[name], now)
        chain.append(f"  {name} last seen working " + ("never" if seen is None else f"{round(now - seen)}s ago"))
    run = state.drill
    if run is not None and run.uplink in spec.path:
        line = f"drill of {run.uplink} is {run.phase.value}: it moves no class"
        drill = policy.drills.get(run.uplink)
        if drill is not None and drill.canary is not None:
            canary = drill.canary
            via = canary_routes(policy, run).get(run.uplink)
            line += (
                f"; its canary {canary.probe.kind} to {canary.probe.target} "
                f"(table {canary.table}, mark {canary.fwmark:#x}) is "
                + (f"routed via {via}" if via is not None else "unreachable")
                + f", {run.canary_results} of {canary.rounds} probes"
            )
        chain.append(line)
    cand = candidate(spec, policy, state)
    choice, ready_at = choose(spec, policy, state, now)
    chain.append(f"now the first usable uplink is {cand.uplink or cand.route}: {cand.cause}")
    if ready_at is not None:
        chain.append(f"failback to {cand.uplink} in {round(ready_at - now, 1)}s (preempt delay)")
    elif choice.pending:
        chain.append(f"waiting: {choice.cause}")
    return chain
