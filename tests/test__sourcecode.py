"""The rooms of consumers/, enforced: who may import whom, and where SQL lives.

- roles/ and ops/ are entry points: only the pod imports roles/ (a role never imports
  another), only the CLI imports ops/ (ops/ modules may use each other);
- gemini/ and store/ are the edges: they never import batch/, roles/ or ops/;
- SQL is written in store/ only.

Each rule is checked over the real tree and, so that it is seen to bite, over a made-up
module that breaks it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "consumers"
ROOMS = ("roles", "batch", "gemini", "store", "ops")
# Who may import a room (by module path relative to consumers/, without .py).
ENTRY = {"roles": {"pod"}, "ops": {"cli", "ops/*"}}
EDGES = {"gemini", "store"}
SQL = re.compile(r"\b(SELECT|INSERT\s+INTO|UPDATE\s+batchyard|DELETE\s+FROM|CREATE\s+TABLE)\b")


def _modules() -> dict[str, str]:
    return {str(p.relative_to(ROOT).with_suffix("")): p.read_text()
            for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts}


def _imported_rooms(source: str) -> set[str]:
    """Rooms a module's imports reach, top-level and function-level alike."""
    rooms: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "consumers" and len(parts) > 1 and parts[1] in ROOMS:
                rooms.add(parts[1])
    return rooms


def import_violations(modules: dict[str, str]) -> list[str]:
    found = []
    for name, source in modules.items():
        room = name.split("/")[0] if "/" in name else None
        for target in _imported_rooms(source):
            allowed = ENTRY.get(target, set())
            if target in ENTRY and name not in allowed and f"{room}/*" not in allowed:
                found.append(f"{name} imports {target}/ (only {sorted(ENTRY[target])} may)")
            if room in EDGES and target in {"batch", "roles", "ops"}:
                found.append(f"{name} ({room}/ is an edge) imports {target}/")
    return sorted(found)


def _strings(source: str) -> list[str]:
    return [n.value for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def sql_outside_store(modules: dict[str, str]) -> set[str]:
    return {name for name, source in modules.items()
            if not name.startswith("store/")
            and any(SQL.search(s) for s in _strings(source))}


def test_rooms_import_only_what_they_may() -> None:
    assert import_violations(_modules()) == []


def test_sql_lives_in_store() -> None:
    assert sql_outside_store(_modules()) == set()


@pytest.mark.parametrize(("name", "source", "rule"), [
    ("batch/x", "from consumers.roles import submit", "imports roles/"),
    ("roles/x", "from consumers.roles.recovery import Recovery", "imports roles/"),
    ("roles/x", "from consumers.ops import report", "imports ops/"),
    ("store/x", "from consumers.batch.inputs import Input", "edge) imports batch/"),
    ("gemini/x", "def f():\n    from consumers.ops import demo", "imports ops/"),
    ("gemini/x", "from consumers.store.batches import Store", None),
    ("ops/x", "from consumers.ops import provision", None),
    ("cli", "from consumers.ops.report import status", None),
    ("pod", "from consumers.roles.poll import Poll", None),
])
def test_the_import_rules_bite(name: str, source: str, rule: str | None) -> None:
    found = import_violations({name: source})
    if rule is None:
        assert found == []
    else:
        assert found and all(rule in f or "imports" in f for f in found), found
        assert any(rule in f for f in found), found


def test_the_sql_rule_bites() -> None:
    made_up = {"batch/x": 'Q = "SELECT batch_id FROM batchyard.batches"',
               "store/x": 'Q = "DELETE FROM batchyard.jobs"',
               "batch/y": 'log = "selected"'}
    assert sql_outside_store(made_up) == {"batch/x"}


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def too_long(modules: dict[str, str]) -> list[str]:
    """Modules over MAX_MODULE_LINES lines and functions over MAX_FUNCTION_LINES."""
    found = []
    for name, source in modules.items():
        if (lines := source.count("\n")) > MAX_MODULE_LINES:
            found.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    found.append(f"{name}.{node.name}: {size} lines")
    return sorted(found)


def test_modules_and_functions_stay_short() -> None:
    assert too_long(_modules()) == []


def test_the_length_rule_bites() -> None:
    body = "".join(f"    x{n} = {n}\n" for n in range(MAX_FUNCTION_LINES))
    made_up = {"batch/x": f"def f():\n{body}", "batch/y": "x = 1\n" * (MAX_MODULE_LINES + 1),
               "batch/z": f"def g():\n{body[:-len('    x59 = 59')-1]}"}
    assert too_long(made_up) == ["batch/x.f: 61 lines", "batch/y: 401 lines"]
