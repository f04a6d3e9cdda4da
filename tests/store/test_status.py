"""The batch status table (consumers/status.py): pure logic, no servers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from consumers.status import (
    DIES_WITH,
    ENTERED_FROM,
    FINISHED,
    INITIAL,
    LIVE,
    PACKED,
    RUNNING,
    STATUSES,
    UNPARKED_TO,
    Status,
    allowed_from,
)
from consumers.store.batches import Store

ROOT = Path(__file__).resolve().parents[2]
CHECK = re.compile(r"CHECK\s*\(\s*status\s+IN\s*\(([^)]*)\)", re.IGNORECASE)
# What mypy would refuse, given at run time to show the runtime checks.
TYPO: Any = "submited"
NO_POOL: Any = None


def _reachable(start: Status, moves: dict[Status, set[Status]]) -> set[Status]:
    seen, todo = {start}, [start]
    while todo:
        for to in moves[todo.pop()] - seen:
            seen.add(to)
            todo.append(to)
    return seen


def _moves() -> dict[Status, set[Status]]:
    """For each status, the statuses it may move to."""
    return {s: {to for to, sources in ENTERED_FROM.items() if s in sources} for s in STATUSES}


def test_the_table_covers_what_the_migrations_allow() -> None:
    """The Literal, the table and the last CHECK constraint on batches.status in
    migrations/ name the same statuses, so that neither can drift from the other."""
    checks = [found for path in sorted((ROOT / "migrations").glob("*.up.sql"))
              for found in CHECK.findall(path.read_text())]
    assert checks, "no CHECK (status IN (...)) in migrations/"
    assert set(re.findall(r"'(\w+)'", checks[-1])) == STATUSES
    assert set(ENTERED_FROM) == STATUSES
    assert all(sources <= STATUSES for sources in ENTERED_FROM.values())


def test_every_status_is_reachable_and_can_finish() -> None:
    """Every status is reachable from a new batch, and from every status a finished one
    is: no status is a trap, auth_failed included."""
    moves = _moves()
    assert _reachable(INITIAL, moves) == STATUSES
    for status in STATUSES:
        assert _reachable(status, moves) & FINISHED, status
    assert moves["auth_failed"] - {"auth_failed"}


def test_finished_statuses_leave_only_by_a_redrive() -> None:
    """A finished batch goes back to pending_submission (the re-drive moves its row) or
    to submitting (the re-driven attempt's message came first), nowhere else."""
    moves = _moves()
    for status in FINISHED:
        assert moves[status] == {"pending_submission", "submitting"}, status


def test_the_named_sets_agree_with_the_table() -> None:
    """Live and finished split the statuses; every narrower set a step uses is one the
    table allows."""
    assert LIVE | FINISHED == STATUSES and not LIVE & FINISHED
    assert "auth_failed" in LIVE
    assert RUNNING <= LIVE and PACKED <= LIVE
    for working in DIES_WITH.values():
        assert allowed_from("dead", working) == working
    for to in UNPARKED_TO.values():
        assert allowed_from(to, "auth_failed") == {"auth_failed"}


def test_allowed_from_narrows_and_refuses() -> None:
    """A narrower `only` is kept; an unknown status, an edge the table lacks and an empty
    set raise at once."""
    assert allowed_from("submitted") == {"submitting", "submitted", "auth_failed"}
    assert allowed_from("submitted", ("submitting", "submitted")) == {"submitting",
                                                                       "submitted"}
    with pytest.raises(ValueError, match="unknown batch status"):
        allowed_from(TYPO)
    with pytest.raises(ValueError, match="may not move"):
        allowed_from("succeeded", "pending_submission")
    with pytest.raises(ValueError, match="from no status"):
        allowed_from("cancelled", ())


async def test_the_store_refuses_a_status_outside_the_table() -> None:
    """Store.move checks before it touches the database; Store.update sets no status."""
    store = Store(NO_POOL)
    with pytest.raises(ValueError):
        await store.move("b", TYPO)
    with pytest.raises(ValueError):
        await store.move("b", "dead", from_="auth_failed")
    with pytest.raises(TypeError):
        await store.update("b", status="dead")
    with pytest.raises(TypeError):
        await store.move("b", "dead", status="failed")


SNIPPET = '''\
from consumers.status import Status
from consumers.store.batches import Store


async def moves(store: Store) -> None:
    await store.move("b", "submitted", on_attempt=0, from_="submitting")
    await store.move("b", "submited", on_attempt=0)  # bad
    await store.move("b", "submitted", from_=("submitting", "pending_submision"))  # bad
    await store.unpark(["b"], "pending_submission")
    await store.unpark(["b"], "pending")  # bad
    await store.update("b", {"attempt": 0, "status": "submitting"}, job_name=None)
    await store.update("b", {"attempt": 0, "status": "submiting"}, job_name=None)  # bad
    fine: Status = "cancelled"
    typo: Status = "canceled"  # bad
'''


def test_mypy_rejects_a_misspelled_status(tmp_path: Path) -> None:
    """mypy, with the project's settings, fails exactly the lines that misspell a status."""
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "cache"), "--no-error-summary", str(snippet)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    bad = {n for n, line in enumerate(SNIPPET.splitlines(), 1) if line.endswith("# bad")}
    failed = {int(m) for m in re.findall(r"snippet\.py:(\d+): error", run.stdout)}
    assert run.returncode == 1, run.stdout + run.stderr
    assert failed == bad, run.stdout
