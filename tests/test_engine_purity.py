"""The engine is pure: it imports nothing that does I/O or reads a clock."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "failoverd" / "engine"
BANNED = {
    "asyncio",
    "time",
    "socket",
    "pyroute2",
    "aiomqtt",
    "prometheus_client",
    "datetime",
    "os",
    "subprocess",
    "threading",
    "random",
    "structlog",
    "logging",
    "select",
    "selectors",
}
# The engine may import these failoverd modules only: each is pure too.
ALLOWED_INTERNAL = {"failoverd.engine", "failoverd.policy.model", "failoverd.errors"}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_engine_modules_exist() -> None:
    files = {p.name for p in ENGINE.glob("*.py")}
    assert {"step.py", "health.py", "decide.py", "state.py", "events.py", "effects.py", "records.py"} <= files


def test_engine_imports_nothing_impure() -> None:
    for path in ENGINE.glob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in BANNED, f"{path.name} imports {name}"
            if top == "failoverd":
                assert any(name == a or name.startswith(a + ".") for a in ALLOWED_INTERNAL), (
                    f"{path.name} imports {name}, which is not known to be pure"
                )


def test_policy_model_is_pure_too() -> None:
    model = ENGINE.parent / "policy" / "model.py"
    for name in _imports(model):
        assert name.split(".")[0] not in BANNED | {"pydantic", "ruamel"}, name


def test_the_policy_does_not_depend_on_the_engine() -> None:
    # The engine reads the compiled policy; the other way round would be a loop (the policy's checks
    # know alarm kinds from policy.model, not from the engine's table).
    for path in (ENGINE.parent / "policy").glob("*.py"):
        for name in _imports(path):
            assert not name.startswith("failoverd.engine"), f"policy/{path.name} imports {name}"
