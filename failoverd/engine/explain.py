"""A class's chain of evidence, from probes to decision (placeholder; replaced by the engine branch)."""

from __future__ import annotations

from failoverd.engine.decide import candidate, choose, drained
from failoverd.engine.state import EngineState, TargetState
from failoverd.policy.model import Policy


class UnknownClass(Exception):
    pass


def explain(policy: Policy, st: EngineState, name: str) -> list[str]:
    spec = policy.classes.get(name)
    if spec is None:
        raise UnknownClass(f'unknown class "{name}" (classes: {", ".join(policy.classes)})')
    c = st.classes[name]
    chain: list[str] = []
    where = f"via {c.uplink}" if c.route == "via" else c.route
    chain.append(f"class {name} is {where} since {round(st.now - c.since, 1)}s ago: {c.cause}")
    for k, v in c.cause.evidence:
        chain.append(f"  evidence {k}: {v}")
    forced = st.active_override("force", name)
    if forced is not None:
        chain.append(f"override {forced.describe()}, {round(forced.expires - st.now)}s left")
    chain.append(
        f"path: {' > '.join(spec.path)}"
        + (f"; revertive after {spec.preempt_delay:g}s" if spec.revertive else "; non-revertive")
    )
    for up_name in spec.path:
        u = st.uplinks[up_name]
        up = policy.uplinks[up_name]
        flags = []
        if not up.admits(name):
            flags.append("does not admit this class")
        if drained(st, up_name):
            flags.append("drained")
        if u.suppressed:
            flags.append(f"damped, penalty {u.penalty:.0f}")
        extra = f" [{'; '.join(flags)}]" if flags else ""
        chain.append(f"  {up_name}: {u.health.value}{extra} since {round(st.now - u.since, 1)}s — {u.cause}")
        for p in up.probes:
            t = u.targets.get(p.key, TargetState())
            verdict = f"FAILED ({t.failed_cause})" if t.failed else "ok"
            chain.append(f"    probe {p.key}: {verdict}, {t.losses} losses / {t.successes} successes in a row")
    cand = candidate(spec, policy, st)
    choice, ready_at = choose(spec, policy, st, st.now)
    chain.append(f"now the first usable uplink is {cand.uplink or cand.route}: {cand.cause}")
    if ready_at is not None:
        chain.append(f"failback to {cand.uplink} in {round(ready_at - st.now, 1)}s (preempt delay)")
    elif choice.pending:
        chain.append(f"waiting: {choice.cause}")
    return chain
