"""Each chaos scenario under the profile CHAOS_PROFILE names (short by default)."""

from __future__ import annotations

import pytest

from sandbox.pg import PostgresServer
from tests.chaos import runner
from tests.chaos.conftest import RESULTS
from tests.chaos.profiles import current
from tests.chaos.scenarios import SCENARIOS

PROFILE = current()
pytestmark = pytest.mark.timeout(PROFILE.scenario_timeout + runner.CHECK_TIMEOUT + 120)

# Confirmed batchyard defects, each with its reproduction in the reason (strict: a fix
# turns the xfail into a failure that says to remove the entry).
DEFECTS: dict[str, str] = {}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=DEFECTS[n], strict=True)) if n in DEFECTS
    else n for n in SCENARIOS])
async def test_scenario_keeps_the_invariant(name: str, pg: PostgresServer) -> None:
    """The scenario settles, and the invariant holds: nothing lost, nothing duplicated."""
    result = await runner.run(name, PROFILE, pg)
    RESULTS.append(result)
    assert result.batches > 0 and result.items > 0
    assert result.faults_total > 0, "a chaos scenario that injected nothing"
    assert result.verdict == "pass", "\n".join(result.violations)
