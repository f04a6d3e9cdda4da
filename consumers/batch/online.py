"""Online embeddings (batchEmbedContents): small batches, and the Batch API's fallback.

Calls go 100 texts at a time, a few at once, each text its own request (so its own
vector, on gemini-embedding-2 too). Each call's vectors are checked and written as it
returns, so memory does not grow with the batch; an answer with a different count fails
that call's items for this attempt. A retryable error retries that call in place with
backoff (the server's RetryInfo delay wins) within a small budget, then gives up to the
message's own redelivery. A call that fails stops the others after their call in flight,
and what the finished calls wrote stays.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from consumers import metrics, vectors
from consumers.app import App
from consumers.batch.inputs import Input
from consumers.batch.results import FLUSH_ROWS, Ingest
from consumers.errors import RetryableError
from consumers.runtime import backoff
from events.payloads import ErrorDetail, Item

log = structlog.get_logger("batchyard.online")
CHUNK = 100  # batchEmbedContents' per-call limit
PARALLEL = 4
TRIES = 4
MAX_IN_PLACE_DELAY = 30.0


async def embed_online(app: App, inp: Input) -> Ingest:
    """Embed and store every item of `inp`: the attempt's results.

    The first error of any call (auth, retryable, permanent: what the runtime maps) is
    raised once the vectors of the calls that finished are written.
    """
    ingest = Ingest(app, inp)
    config = inp.embed_config()
    starts = iter(range(0, len(inp.items), CHUNK))  # shared: each call is made once
    errors: list[Exception] = []
    stop = asyncio.Event()

    async def worker() -> None:
        for start in starts:
            if stop.is_set():
                return
            chunk = inp.items[start:start + CHUNK]
            try:
                got = await _call(app, inp.model, [i.text for i in chunk], config, stop)
                _take(ingest, chunk, got)
                if len(ingest.rows) >= FLUSH_ROWS:
                    await ingest.flush()
            except Exception as exc:  # kept for the caller: a flush is never cut short
                errors.append(exc)
                stop.set()

    async with asyncio.TaskGroup() as tg:
        for _ in range(PARALLEL):
            tg.create_task(worker())
    if errors:
        try:
            await ingest.flush()
        except Exception as exc:  # the call's error is the one the runtime must see
            log.warning("online.flush_failed", error=str(exc))
        raise errors[0]
    await ingest.finish()
    return ingest


def _take(ingest: Ingest, items: list[Item], got: list[list[float] | None]) -> None:
    """One call's answer for `items`, added to `ingest` (written by its next flush)."""
    if len(got) != len(items):
        # Which answer is whose cannot be told: none is stored, and every item of the
        # call fails this attempt and goes round (CONTRACT §8).
        log.warning("online.count_mismatch", texts=len(items), vectors=len(got))
        error = ErrorDetail(status="RESULT_MISSING",
                            message=f"{len(got)} vectors answered for {len(items)} texts")
        for item in items:
            ingest.add(item.id, None, error)
        return
    for item, values in zip(items, got, strict=True):
        if values is None:
            ingest.add(item.id, None, ErrorDetail(message="no embedding"))
        else:
            ingest.add(item.id, vectors.from_list(values), None)


async def _call(app: App, model: str, texts: list[str], config: dict[str, Any],
                stop: asyncio.Event) -> list[list[float] | None]:
    """One batchEmbedContents call, retried in place unless another call has failed."""
    attempt = 1
    while True:
        try:
            return await app.gemini.embed(model, texts, config)
        except RetryableError as exc:
            delay = backoff(attempt, exc.delay)
            if attempt == TRIES or delay > MAX_IN_PLACE_DELAY or stop.is_set():
                raise
            metrics.RETRIES.labels("online", "quota" if exc.quota else "transient").inc()
            log.info("online.retry", error=exc.message, delay=round(delay, 2))
            if await _stopped(stop, delay):
                raise  # another call failed while this one waited
        attempt += 1


async def _stopped(stop: asyncio.Event, delay: float) -> bool:
    """Wait `delay` seconds, less if `stop` is set meanwhile: whether it was."""
    try:
        await asyncio.wait_for(stop.wait(), delay)
    except TimeoutError:
        return False
    return True
