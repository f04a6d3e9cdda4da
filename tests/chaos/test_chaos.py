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
DEFECTS: dict[str, str] = {
    "nats_restart": (
        "key-health pods exit 1 after a nats-server outage longer than a JetStream request's "
        "timeout: KeyHealthRole.background() (consumers/key_health.py) catches only "
        "RetryableError and PublishError, so a nats TimeoutError from the KV read/write or "
        "from stream_info(BATCH_PARKED) in _stranded() escapes into the pod's TaskGroup"),
    "hostile_stream": (
        "a batch.submit nested ~1000+ levels deep kills every submit pod that fetches it "
        "(a poison message: redelivered to the next pod): letters.original() "
        "(consumers/letters.py) decodes the whole message and lets msgspec's RecursionError "
        "out, and Runtime._guard (consumers/_runtime.py) does not contain it"),
}


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
