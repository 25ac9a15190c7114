"""The pure failover engine: events in, effects out; no I/O, no clocks, no sockets."""

from failoverd.engine.effects import Cause, Effect
from failoverd.engine.events import Event
from failoverd.engine.state import EngineState, Health, Lifecycle, initial_state
from failoverd.engine.step import next_deadline, step

__all__ = ["Cause", "Effect", "EngineState", "Event", "Health", "Lifecycle", "initial_state", "next_deadline", "step"]
