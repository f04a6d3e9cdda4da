"""An attempt's jobs (CONTRACT §11): one, or shards of a batch too big for one; settling
job by job.

An attempt has one job, shard 0, or shards k = 1…n: contiguous runs of its items. The
`jobs` table is the record: each job's row holds its item count, so shard k starts where
shards 1…k-1 end, whatever BATCHYARD_MAX_JOB_TOKENS says by the time it is polled. A
finished job keeps its failed items in its row; the attempt settles once, when the rows
of finished jobs cover all of its items.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
from nats.aio.msg import Msg

from consumers.app import App
from consumers.batch.finish import finish_attempt
from consumers.batch.inputs import JSON_ESCAPE, LINE_FRAMING, Input
from consumers.gemini.jobs import TERMINAL
from events.payloads import ErrorDetail, Item

FILE_MAX_BYTES = 2 * 1024**3  # the Batch API's input file limit
_failures = msgspec.json.Decoder(dict[str, ErrorDetail])


def split(items: list[Item], max_tokens: int, taken: list[int] | None = None,
          ) -> list[list[Item]]:
    """The fewest contiguous shards each under `max_tokens` and the file limit.

    `taken` are the sizes of shards already recorded; the rest is split greedily. An
    item larger than the limit on its own still gets a shard (it cannot be divided).
    """
    parts: list[list[Item]] = []
    at = 0
    for n in taken or ():
        parts.append(items[at:at + n])
        at += n
    part: list[Item] = []
    text = size = 0
    for item in items[at:]:
        b = len(item.text.encode())
        line = JSON_ESCAPE * b + len(item.id) + LINE_FRAMING
        if part and (-(-(text + b) // 4) > max_tokens or size + line > FILE_MAX_BYTES):
            parts.append(part)
            part, text, size = [], 0, 0
        part.append(item)
        text += b
        size += line
    if part:
        parts.append(part)
    return parts


def needs_split(inp: Input, max_tokens: int) -> bool:
    return inp.est_tokens() > max_tokens or inp.max_jsonl_bytes() > FILE_MAX_BYTES


async def rows(app: App, batch_id: str, attempt: int) -> list[asyncpg.Record]:
    """The attempt's job rows, shard 0 (unsplit) or 1…n, in order."""
    return await app.store.jobs.of_attempt(batch_id, attempt)


async def plan(app: App, inp: Input,
               ) -> tuple[list[tuple[int, Input]], dict[int, asyncpg.Record]]:
    """The attempt's jobs, each its shard number and items, and their rows so far: shard 0
    alone when one job will do (or an earlier try made it so), else shards 1…n."""
    req = inp.request
    recorded = {int(r["shard"]): r for r in await rows(app, req.batch_id, req.attempt)}
    limit = app.settings.max_job_tokens
    if 0 in recorded or (not recorded and not needs_split(inp, limit)):
        return [(0, inp)], recorded
    parts = split(inp.items, limit, [int(r["items"]) for r in recorded.values()])
    return [(k, Input(req, items)) for k, items in enumerate(parts, 1)], recorded


def covers(recorded: list[asyncpg.Record], inp: Input) -> bool:
    """Whether the recorded jobs hold every item of the attempt (all were created)."""
    return sum(int(r["items"]) for r in recorded) == len(inp.items)


def part(inp: Input, recorded: list[asyncpg.Record], shard: int) -> Input:
    """Shard `shard`'s items of the attempt (all of them for shard 0)."""
    start = sum(int(r["items"]) for r in recorded if r["shard"] < shard)
    size = next(int(r["items"]) for r in recorded if r["shard"] == shard)
    return inp.part(start, start + size)


async def settle(app: App, msg: Msg, inp: Input, *, stage: str) -> str | None:
    """Finish the attempt if every one of its jobs has; returns the new status or None."""
    req = inp.request
    recorded = await rows(app, req.batch_id, req.attempt)
    if (not recorded or any(r["state"] not in TERMINAL for r in recorded)
            or not covers(recorded, inp)):
        return None
    failures: dict[str, ErrorDetail] = {}
    for r in recorded:
        if r["failures"]:
            failures.update(_failures.decode(r["failures"]))
    whole = any(r["state"] != "succeeded" for r in recorded)
    last: Any = recorded[-1]["job_name"]
    return await finish_attempt(app, msg, inp, req.attempt, failures, stage=stage,
                                job_name=last, path="batch", whole_job_failed=whole)
