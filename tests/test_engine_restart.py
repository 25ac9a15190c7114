"""After a restart the engine adopts the kernel's assignments and moves nothing before evidence."""

from __future__ import annotations

from pathlib import Path

from failoverd.engine import effects as fx
from failoverd.engine import events as ev
from failoverd.engine.state import Health, Override, restored_state
from failoverd.engine.step import step
from failoverd.policy import load_policy

POLICY = load_policy(Path(__file__).resolve().parent.parent / "policies" / "lab.yaml")


def switches(effects: tuple[fx.Effect, ...]) -> list[tuple[str, str | None]]:
    return [(e.cls, e.to_uplink) for e in effects if isinstance(e, fx.SwitchClass)]


def test_adopted_classes_stay_until_the_primary_is_judged() -> None:
    state = restored_state(POLICY, 100.0, {"critical": ("fiber", "via"), "bulk": ("mobile-a", "via")})
    assert state.uplinks["fiber"].health is Health.UNKNOWN
    # mobile-a answers first: nothing moves, fiber has no evidence yet.
    state, effects = step(state, ev.ProbeResult("mobile-a", "udp-echo:198.19.0.1:7", True, 0.01), POLICY, 100.1)
    state, effects2 = step(state, ev.ProbeResult("mobile-a", "udp-echo:198.19.0.2:7", True, 0.01), POLICY, 100.1)
    assert switches(effects) == switches(effects2) == []
    assert state.classes["critical"].uplink == "fiber" and state.classes["critical"].cause.code == "adopted"
    # fiber's targets answer: critical stays; bulk, revertive, waits for its preempt delay.
    for target in ("198.19.0.1", "198.19.0.2"):
        state, effects = step(state, ev.ProbeResult("fiber", f"udp-echo:{target}:7", True, 0.01), POLICY, 100.2)
        assert switches(effects) == []
    assert state.uplinks["fiber"].health is Health.UP
    state, effects = step(state, ev.Tick(), POLICY, 100.2 + 30)
    assert switches(effects) == [("bulk", "fiber")]


def test_adopted_class_on_an_uplink_known_down_moves() -> None:
    state = restored_state(POLICY, 0.0, {"critical": ("mobile-a", "via")})
    state, _ = step(state, ev.CarrierChanged("mobile-a", False), POLICY, 0.0)
    state, _ = step(state, ev.CarrierChanged("fiber", True), POLICY, 0.0)
    assert state.classes["critical"].uplink == "mobile-a"  # fiber unknown, mobile-b unknown: wait ...
    for target in ("198.19.0.1", "198.19.0.2"):
        state, _ = step(state, ev.ProbeResult("mobile-b", f"udp-echo:{target}:7", True, 0.01), POLICY, 0.1)
    # ... no: mobile-a is known down, and mobile-b is usable, so critical leaves at once.
    assert state.classes["critical"].uplink == "mobile-b"


def test_restored_overrides_expire_on_schedule_and_bad_ones_are_dropped() -> None:
    good = Override("o3", "force", "critical", "mobile-b", "drill", "ops", 0.0, 50.0)
    stale = Override("o1", "force", "critical", "mobile-b", "old", "ops", 0.0, 5.0)
    gone = Override("o2", "drain", None, "lte", "uplink left the policy", "ops", 0.0, 500.0)
    state = restored_state(POLICY, 10.0, {}, (good, stale, gone), 3)
    assert [o.id for o in state.overrides] == ["o3"]
    assert state.override_seq == 3


def test_a_class_held_by_an_override_stays_while_its_uplink_is_unjudged() -> None:
    forced = Override("o1", "force", "critical", "mobile-b", "before crash", "ops", 0.0, 600.0)
    state = restored_state(POLICY, 10.0, {"critical": ("mobile-b", "via")}, (forced,), 1)
    # fiber answers first after the restart; mobile-b has no evidence yet. The kernel already sends
    # critical where the operator put it: bouncing it to fiber and back would cut its flows twice.
    for target in ("198.19.0.1", "198.19.0.2"):
        state, effects = step(state, ev.ProbeResult("fiber", f"udp-echo:{target}:7", True, 0.01), POLICY, 10.1)
        assert [s for s in switches(effects) if s[0] == "critical"] == []
    assert state.uplinks["fiber"].health is Health.UP
    assert state.classes["critical"].uplink == "mobile-b"
    # mobile-b is found dead: the override waits, and critical goes where the path says.
    state, effects = step(state, ev.CarrierChanged("mobile-b", False), POLICY, 10.2)
    assert switches(effects) == [("critical", "fiber")]


def test_a_batch_of_results_decides_as_the_same_results_one_by_one() -> None:
    """The daemon folds answers that arrive together into one ProbeBatch; the outcome must not change."""
    rounds = []
    for k in range(12):  # fiber's targets go silent after round 4, mobile-a keeps answering
        t = 0.05 * (k + 1)
        rounds.append(
            (
                t,
                tuple(
                    ev.ProbeResult(name, f"udp-echo:{target}:7", name != "fiber" or k < 4, 0.01)
                    for name in ("fiber", "mobile-a")
                    for target in ("198.19.0.1", "198.19.0.2")
                ),
            )
        )
    one, batch = restored_state(POLICY, 0.0, {}), restored_state(POLICY, 0.0, {})
    moved_one, moved_batch = [], []
    for t, results in rounds:
        for r in results:
            one, effects = step(one, r, POLICY, t)
            moved_one += switches(effects)
        batch, effects = step(batch, ev.ProbeBatch(results), POLICY, t)
        moved_batch += switches(effects)
    assert moved_batch == moved_one
    assert ("critical", "mobile-a") in moved_batch  # the silent fiber was noticed at all
    assert {n: u.health for n, u in batch.uplinks.items()} == {n: u.health for n, u in one.uplinks.items()}
    assert batch.classes == one.classes
