"""Run one scenario in its own world and judge it with the invariant."""

from __future__ import annotations

import asyncio
import time

from events import jetstream as defs
from events import subjects
from sandbox.pg import PostgresServer
from tests.chaos.env import World, consumer_numbers, subject_counts, world
from tests.chaos.invariant import (
    Letter,
    Violations,
    check_data,
    check_pods,
    completions,
    dead_letters,
)
from tests.chaos.profiles import Profile
from tests.chaos.report import Result
from tests.chaos.scenarios import OPTIONS, SCENARIOS

CHECK_TIMEOUT = 180.0


async def run(name: str, profile: Profile, pg: PostgresServer, *, seed: int = 0) -> Result:
    """Set up, run scenario `name`, check the invariant, tear down; never hangs."""
    started = time.monotonic()
    async with world(name, profile, pg, seed=seed, **OPTIONS.get(name, {})) as w:  # type: ignore[arg-type]
        v = Violations()
        try:
            async with asyncio.timeout(profile.scenario_timeout):
                await SCENARIOS[name](w)
        except TimeoutError:
            v.add(f"the scenario did not finish within {profile.scenario_timeout:.0f} s")
        if not w.figures.get("drained"):
            v.add(f"not settled within {profile.drain_timeout:.0f} s of the drain bound")
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                redeliveries = await _redeliveries(w)
                letters = await dead_letters(w)
                v.extend(await check_data(w, letters))
                v.extend(await completions(w))
                if name == "hostile_stream":
                    v.extend(_every_invalid_dead(w, letters))
                if name == "duplicates" and w.ledger.deduplicated != w.faults["same_id_copies"]:
                    v.add(f"{w.ledger.deduplicated} same-id copies dropped by the stream, "
                          f"{w.faults['same_id_copies']} sent")
                v.extend(await check_pods(w))
        except TimeoutError:
            redeliveries = {}
            v.add(f"the invariant check did not finish within {CHECK_TIMEOUT:.0f} s")
        w.figures["dead_letters"] = len(letters) if "letters" in locals() else None
        w.figures["pods_started"] = len(w.stack.pods)
        return Result(
            scenario=name, profile=profile.name, batches=len(w.ledger.accepted),
            items=w.ledger.items, faults=dict(w.faults), redeliveries=redeliveries,
            time_to_drain_s=w.figures.get("time_to_drain_s"),
            run_s=round(time.monotonic() - started, 1), verdict="fail" if v else "pass",
            violations=list(v), figures={k: val for k, val in w.figures.items()
                                         if k not in ("last_publish", "time_to_drain_s")})


async def _redeliveries(w: World) -> dict[str, int]:
    """Deliveries beyond the first of each message, per durable."""
    numbers = await consumer_numbers(w.js)
    batch = await subject_counts(w.js, defs.BATCH)
    key = await subject_counts(w.js, defs.KEY)
    parked = (await w.js.stream_info(defs.BATCH_PARKED)).state.last_seq
    distinct = {"submit": batch.get(subjects.SUBMIT, 0), "poll": batch.get(subjects.POLL, 0),
                "key-rotated": key.get(subjects.KEY_ROTATED, 0),
                "recovery": key.get(subjects.KEY_VALID, 0), "replay": parked}
    return {name: max(0, numbers[name]["deliveries"] - n) for name, n in distinct.items()}


def _every_invalid_dead(w: World, letters: list[Letter]) -> Violations:
    """Every invalid message is on batch.dead once, as invalid_message, under dead:<seq>."""
    v = Violations()
    by_id: dict[str, list[str]] = {}
    for letter in letters:
        reason = letter.body.get("reason") if isinstance(letter.body, dict) else None
        by_id.setdefault(letter.msg_id, []).append(str(reason))
    wrong = []
    for seq in w.ledger.invalid:
        got = by_id.get(subjects.dead_id(seq), [])
        if got != ["invalid_message"]:
            wrong.append(f"seq {seq}: {got or 'no dead letter'}")
    v.add("invalid messages not dead-lettered exactly once as invalid_message", wrong)
    return v
